//! `iryo-bench`: load generator for a running iryo server (loopback only).
//!
//! ```text
//! iryo-bench read   --base http://127.0.0.1:8080/fhir --clients 1  --seconds 10
//! iryo-bench read   --base http://127.0.0.1:8080/fhir --clients 32 --seconds 10
//! iryo-bench search --base http://127.0.0.1:8080/fhir --iterations 500
//! ```
//! Every run is bounded in time or count and only talks to the given base URL, which must be
//! on the loopback interface.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::Value;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Single-resource reads of random existing Patients and Observations.
    Read {
        #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
        base: String,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Make N copies of gzip'd NDJSON transaction bundles with fresh UUIDs (for the 10x data set).
    Replicate {
        #[arg(long, default_value_t = 10)]
        times: usize,
        input: std::path::PathBuf,
        output: std::path::PathBuf,
    },
    /// Train the zstd dictionary for stored resource bodies from NDJSON(.gz)/JSON resources.
    TrainDict {
        #[arg(long, default_value_t = 65536)]
        size: usize,
        #[arg(long)]
        out: std::path::PathBuf,
        inputs: Vec<std::path::PathBuf>,
    },
    /// Typical searches, each run `iterations` times, one client.
    Search {
        #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
        base: String,
        #[arg(long, default_value_t = 300)]
        iterations: usize,
    },
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn check_loopback(base: &str) -> anyhow::Result<()> {
    let host = base
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    if !(host == "127.0.0.1" || host == "localhost" || host == "[::1]") {
        bail!("iryo-bench only targets loopback servers, not {host}");
    }
    Ok(())
}

async fn get_json(c: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let r = c.get(url).send().await?;
    let st = r.status();
    let v: Value = r.json().await?;
    if !st.is_success() {
        bail!("{url}: {st}: {v}");
    }
    Ok(v)
}

async fn sample_ids(
    c: &reqwest::Client,
    base: &str,
    ty: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let b = get_json(c, &format!("{base}/{ty}?_count={n}&_elements=id")).await?;
    Ok(b["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["resource"]["id"].as_str().map(|s| format!("{ty}/{s}")))
                .collect()
        })
        .unwrap_or_default())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    match cli.cmd {
        Cmd::Read {
            base,
            clients,
            seconds,
        } => {
            check_loopback(&base)?;
            let mut ids = sample_ids(&client, &base, "Patient", 200).await?;
            ids.extend(sample_ids(&client, &base, "Observation", 800).await?);
            if ids.is_empty() {
                bail!("no resources to read: import data first");
            }
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut tasks = vec![];
            for k in 0..clients {
                let (c, base, ids) = (client.clone(), base.clone(), ids.clone());
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(100_000);
                    let mut i = k * 7919;
                    while Instant::now() < deadline {
                        let url = format!("{base}/{}", ids[i % ids.len()]);
                        i += 1;
                        let t = Instant::now();
                        let r = c.get(&url).send().await.context("request")?;
                        let ok = r.status().is_success();
                        let _ = r.bytes().await?;
                        if !ok {
                            bail!("{url} failed");
                        }
                        lat.push(t.elapsed());
                    }
                    Ok::<_, anyhow::Error>(lat)
                }));
            }
            let mut all = vec![];
            for t in tasks {
                all.extend(t.await??);
            }
            all.sort();
            println!(
                "read clients={clients} seconds={seconds} requests={} throughput={:.0}/s p50={:.3}ms p99={:.3}ms",
                all.len(),
                all.len() as f64 / seconds as f64,
                pct(&all, 0.5),
                pct(&all, 0.99)
            );
        }
        Cmd::TrainDict { size, out, inputs } => train_dict(size, &out, &inputs)?,
        Cmd::Replicate {
            times,
            input,
            output,
        } => replicate(times, &input, &output)?,
        Cmd::Search { base, iterations } => {
            check_loopback(&base)?;
            // pick real values from the data
            let pats = get_json(&client, &format!("{base}/Patient?_count=50")).await?;
            let entries = pats["entry"].as_array().cloned().unwrap_or_default();
            if entries.is_empty() {
                bail!("no patients: import data first");
            }
            let mut queries: Vec<(String, String)> = vec![];
            let p = &entries[entries.len() / 2]["resource"];
            let pid = p["id"].as_str().unwrap_or("").to_string();
            if let Some(fam) = p["name"][0]["family"].as_str() {
                queries.push((
                    "Patient by name".into(),
                    format!("Patient?name={}", enc(fam)),
                ));
            }
            if let (Some(sys), Some(val)) = (
                p["identifier"][0]["system"].as_str(),
                p["identifier"][0]["value"].as_str(),
            ) {
                queries.push((
                    "Patient by identifier".into(),
                    format!("Patient?identifier={}|{}", enc(sys), enc(val)),
                ));
            }
            let obs = get_json(
                &client,
                &format!("{base}/Observation?subject=Patient/{pid}&_count=1"),
            )
            .await?;
            let o = &obs["entry"][0]["resource"];
            let code = o["code"]["coding"][0]["code"].as_str().unwrap_or("8302-2");
            let date = o["effectiveDateTime"]
                .as_str()
                .map(|d| d.chars().take(4).collect::<String>())
                .unwrap_or_else(|| "2020".into());
            queries.push((
                "Observation by patient+code+date".into(),
                format!(
                    "Observation?subject=Patient/{pid}&code={}&date=ge{date}",
                    enc(code)
                ),
            ));
            queries.push((
                "Observation by code (first page)".into(),
                format!("Observation?code={}&_count=20", enc(code)),
            ));
            queries.push((
                "_include".into(),
                format!("Observation?subject=Patient/{pid}&_include=Observation:subject&_count=20"),
            ));
            queries.push((
                "_revinclude".into(),
                format!("Patient?_id={pid}&_revinclude=Encounter:subject"),
            ));
            if let Some(g) = p["gender"].as_str() {
                queries.push((
                    "chained".into(),
                    format!(
                        "Observation?subject:Patient.gender={g}&code={}&_count=20",
                        enc(code)
                    ),
                ));
            }
            for (name, q) in queries {
                let url = format!("{base}/{q}");
                let mut lat = Vec::with_capacity(iterations);
                let mut hits = 0;
                for _ in 0..iterations {
                    let t = Instant::now();
                    let v = get_json(&client, &url).await?;
                    lat.push(t.elapsed());
                    hits = v["total"].as_i64().unwrap_or(-1);
                }
                lat.sort();
                println!(
                    "search {name:<34} total={hits:<6} p50={:.2}ms p99={:.2}ms  [{q}]",
                    pct(&lat, 0.5),
                    pct(&lat, 0.99)
                );
            }
        }
    }
    Ok(())
}

fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'/') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn is_uuid_at(b: &[u8], i: usize) -> bool {
    const SHAPE: [usize; 5] = [8, 4, 4, 4, 12];
    let mut p = i;
    for (k, n) in SHAPE.iter().enumerate() {
        for _ in 0..*n {
            if p >= b.len() || !b[p].is_ascii_hexdigit() {
                return false;
            }
            p += 1;
        }
        if k < 4 {
            if p >= b.len() || b[p] != b'-' {
                return false;
            }
            p += 1;
        }
    }
    true
}

/// Rewrite every UUID in `line` to a new one derived from it and the copy number.
fn rewrite_uuids(line: &str, copy: usize) -> String {
    let b = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < b.len() {
        if (i == 0 || !b[i - 1].is_ascii_hexdigit()) && is_uuid_at(b, i) {
            let u = &line[i..i + 36];
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ copy as u64;
            for c in u.bytes() {
                h ^= c as u64;
                h = h.wrapping_mul(0x100_0000_01b3);
            }
            let h2 = h.rotate_left(29).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            out.push_str(&format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                h >> 32,
                (h >> 16) & 0xffff,
                h & 0xfff,
                h2 >> 52,
                h2 & 0xffff_ffff_ffff
            ));
            i += 36;
        } else {
            let ch = line[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn replicate(
    times: usize,
    input: &std::path::Path,
    output: &std::path::Path,
) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let text = {
        let f = std::fs::File::open(input)?;
        let mut s = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(f), &mut s)?;
        s
    };
    let out = std::fs::File::create(output)?;
    let mut gz =
        flate2::write::GzEncoder::new(std::io::BufWriter::new(out), flate2::Compression::fast());
    let mut n = 0;
    for copy in 0..times {
        for line in std::io::Cursor::new(&text).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let l = if copy == 0 {
                line
            } else {
                rewrite_uuids(&line, copy)
            };
            gz.write_all(l.as_bytes())?;
            gz.write_all(b"\n")?;
            n += 1;
        }
    }
    gz.finish()?;
    println!("wrote {n} bundles to {}", output.display());
    Ok(())
}

fn collect_samples(p: &std::path::Path, out: &mut Vec<Vec<u8>>) -> anyhow::Result<()> {
    use std::io::Read;
    if p.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(p)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        for e in v {
            collect_samples(&e, out)?;
        }
        return Ok(());
    }
    let name = p.display().to_string();
    if !(name.ends_with(".json") || name.ends_with(".ndjson") || name.ends_with(".ndjson.gz")) {
        return Ok(());
    }
    let mut text = String::new();
    let f = std::fs::File::open(p)?;
    if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(f).read_to_string(&mut text)?;
    } else {
        std::io::BufReader::new(f).read_to_string(&mut text)?;
    }
    let docs: Vec<Value> = if name.contains(".ndjson") {
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    } else {
        serde_json::from_str(&text).ok().into_iter().collect()
    };
    for d in docs {
        // stored bodies are single resources: split Bundles into their entries
        if let Some(entries) = d.get("entry").and_then(Value::as_array) {
            for e in entries {
                if let Some(r) = e.get("resource") {
                    out.push(serde_json::to_vec(r)?);
                }
            }
        }
        out.push(serde_json::to_vec(&d)?);
    }
    Ok(())
}

fn train_dict(
    size: usize,
    out: &std::path::Path,
    inputs: &[std::path::PathBuf],
) -> anyhow::Result<()> {
    let mut samples = vec![];
    for p in inputs {
        collect_samples(p, &mut samples)?;
    }
    // keep the training set bounded and varied
    samples.retain(|s| s.len() < 64 * 1024);
    if samples.len() > 40_000 {
        let step = samples.len() / 40_000 + 1;
        samples = samples.into_iter().step_by(step).collect();
    }
    let dict = zstd::dict::from_samples(&samples, size)?;
    std::fs::write(out, &dict)?;
    println!(
        "trained a {} byte dictionary from {} samples -> {}",
        dict.len(),
        samples.len(),
        out.display()
    );
    Ok(())
}
