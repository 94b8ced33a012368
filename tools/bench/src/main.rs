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
