//! Benchmark of the platform (run with `cargo run --release -p iryo-clins --example clins_bench`):
//! 1. `$register` of 50-resource JP_Bundle_CLINS Observation Bundles, profile validation
//!    included, with 8 concurrent senders: units per second;
//! 2. institution view of one patient with 5 years of data from 5 institutions: p50/p99.
//!
//! Runs on an embedded SQLite store in a temporary directory; the service is called directly
//! (no HTTP), the access log is written as in production.

use chrono::{Duration, Utc};
use iryo_clins::{Actor, ClinsConfig, ClinsState};
use iryo_security::store::{SecurityStore, SqliteSecurityStore};
use iryo_security::token::TokenService;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

const INSTITUTIONS: [&str; 5] = [
    "1318814790",
    "1311234567",
    "1319876543",
    "2712345678",
    "0113456789",
];

fn fixture(name: &str) -> Value {
    let p = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("json")
}

fn set_institution(r: &mut Value, inst: &str) {
    for x in r["extension"].as_array_mut().into_iter().flatten() {
        if x["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("JP_eCS_InstitutionNumber"))
        {
            x["valueIdentifier"]["value"] = json!(inst);
        }
    }
}

/// A JP_Bundle_CLINS with the Patient and `n` Observations (copies of the official examples).
fn obs_bundle(base: &Value, inst: &str, local: &str, pk: &str, n: usize, date: &str) -> Value {
    let mut b = base.clone();
    b["identifier"]["value"] = json!(format!("{inst}^2025^{local}"));
    let src: Vec<Value> = base["entry"].as_array().unwrap()[1..].to_vec();
    let mut entries = vec![base["entry"][0].clone()];
    entries[0]["resource"]["identifier"][1]["value"] = json!(pk);
    for i in 0..n {
        let mut e = src[i % src.len()].clone();
        e["fullUrl"] = json!(format!("urn:uuid:{}", uuid_like(local, i)));
        set_institution(&mut e["resource"], inst);
        e["resource"]["effectiveDateTime"] = json!(date);
        entries.push(e);
    }
    b["entry"] = Value::Array(entries);
    b
}

fn uuid_like(seed: &str, i: usize) -> String {
    let h = iryo_clins::ids::hash_hex(&format!("{seed}/{i}"), 32);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn inst_actor(n: &str) -> Actor {
    Actor::Institution {
        client: format!("client-{n}"),
        number: n.into(),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = iryo_db::Store::open(&dir.path().display().to_string())
        .await
        .unwrap();
    let audit: Arc<dyn SecurityStore> =
        Arc::new(SqliteSecurityStore::open(&dir.path().join("audit.db")).unwrap());
    let tokens = TokenService::new([1; 32], "https://bench", "https://bench/clins/fhir");
    let state = ClinsState::new(store, tokens, audit, ClinsConfig::default())
        .await
        .unwrap();
    let base = fixture("Bundle-Bundle-CLINS-Observations-Example-01.json");

    // 0. where the time goes: profile validation alone, one access-log append alone
    let one = obs_bundle(
        &base,
        INSTITUTIONS[0],
        "probe",
        "00012345::1:01",
        49,
        "2025-06-01",
    );
    let validator = iryo_validator::Validator::new();
    let _ = validator.validate(&one, &[]);
    let t = Instant::now();
    for _ in 0..20 {
        let out = validator.validate(&one, &[]);
        assert!(!out.has_errors());
    }
    println!(
        "validation of one 50-resource Bundle: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0 / 20.0
    );
    let probe_audit = SqliteSecurityStore::open(&dir.path().join("probe.db")).unwrap();
    let t = Instant::now();
    for _ in 0..20 {
        let e = iryo_security::store::NewAuditEntry::new(
            Utc::now(),
            "probe",
            "probe",
            iryo_security::audit::AuditAction::Read,
            iryo_security::audit::AuditOutcome::Success,
        );
        probe_audit.append_audit(e).unwrap();
    }
    println!(
        "one access-log append (SQLite file): {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0 / 20.0
    );

    // 1. register throughput
    let total = 400usize;
    let senders = 8usize;
    let bundles: Vec<Value> = (0..total)
        .map(|i| {
            obs_bundle(
                &base,
                INSTITUTIONS[i % 5],
                &format!("bench-{i}"),
                &format!("00012345::{}:01", 1000 + i),
                49,
                "2025-06-01",
            )
        })
        .collect();
    // warm the validator's profile cache
    state
        .register(&inst_actor(INSTITUTIONS[0]), bundles[0].clone())
        .await
        .expect("warm-up register");
    let bundles = Arc::new(bundles);
    let t = Instant::now();
    let mut tasks = vec![];
    for s in 0..senders {
        let (state, bundles) = (state.clone(), bundles.clone());
        tasks.push(tokio::spawn(async move {
            for i in (s..total).step_by(senders).skip(usize::from(s == 0)) {
                let b = bundles[i].clone();
                let inst = INSTITUTIONS[i % 5];
                if let Err(e) = state.register(&inst_actor(inst), b).await {
                    panic!("register failed: {}", e.outcome());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "$register, 50-resource Bundles with validation, {senders} senders: {} in {secs:.2} s = {:.0}/s",
        total - 1,
        (total - 1) as f64 / secs
    );

    // 2. institution view: 5 years, 5 institutions (monthly lab reports of 4 items, a
    // 10-item Condition list and a 5-item Allergy list each)
    let pk = "06123456:記号:12345:01";
    let now = Utc::now();
    for inst in INSTITUTIONS {
        for m in 0..60 {
            let date = (now - Duration::days(30 * m))
                .format("%Y-%m-%d")
                .to_string();
            let b = obs_bundle(&base, inst, &format!("v-{m}"), pk, 4, &date);
            state.register(&inst_actor(inst), b).await.unwrap();
        }
    }
    state
        .record_consent(&inst_actor(INSTITUTIONS[0]), pk, false, now)
        .await
        .unwrap();
    let t = Instant::now();
    let q = iryo_search::query::parse_query(
        iryo_search::model(),
        Some("Bundle"),
        &format!(
            "_tag=urn:iryo:clins:patient|{}&_count=1000",
            iryo_clins::ids::normalize_patient_key(pk).unwrap().hash()
        ),
        iryo_search::query::Handling::Strict,
    )
    .unwrap();
    let tenant = state
        .store()
        .tenant_id("clins-platform")
        .await
        .unwrap()
        .unwrap();
    for _ in 0..20 {
        let page = state
            .store()
            .search(
                tenant,
                iryo_db::SearchRequest {
                    query: q.clone(),
                    page_token: None,
                    base_url: "urn:x".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(page.matches.len(), 300);
    }
    println!(
        "store search of the patient's 300 units: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0 / 20.0
    );
    // where a view's time goes: reading the patient's index, the consent
    let hash = iryo_clins::ids::normalize_patient_key(pk).unwrap().hash();
    let t = Instant::now();
    for _ in 0..100 {
        let r = state
            .store()
            .read(tenant, "Basic", &format!("ix{hash}"))
            .await
            .unwrap()
            .expect("index");
        let v: Value = serde_json::from_slice(r.json.as_deref().unwrap()).unwrap();
        let _: Vec<Value> =
            serde_json::from_str(v["extension"][0]["valueString"].as_str().unwrap()).unwrap();
    }
    println!(
        "read and parse the patient's unit index: {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0 / 100.0
    );
    let key = iryo_clins::ids::normalize_patient_key(pk).unwrap();
    let t = Instant::now();
    for _ in 0..100 {
        assert!(state
            .has_consent(&key, INSTITUTIONS[0], Utc::now())
            .await
            .unwrap());
    }
    println!(
        "consent check: {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0 / 100.0
    );
    let mut times = vec![];
    let mut entries = 0;
    let mut view_bytes = 0;
    let cpu0 = process_cpu_ms();
    for _ in 0..300 {
        let t = Instant::now();
        // what GET Patient/$clins-view answers: the Bundle as JSON bytes
        let bytes = state
            .institution_view_json(&inst_actor(INSTITUTIONS[0]), pk, Utc::now())
            .await
            .unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        view_bytes = bytes.len();
        if entries == 0 {
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            entries = v["entry"].as_array().map_or(0, Vec::len);
        }
    }
    let cpu = (process_cpu_ms() - cpu0) / 300.0;
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "institution view as JSON (300 units from 5 institutions over 5 years, {entries} entries shown, {view_bytes} bytes): p50 {:.2} ms, p99 {:.2} ms, CPU {cpu:.2} ms per view (process, all threads)",
        pct(0.50),
        pct(0.99)
    );
    println!(
        "load average during the run: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

/// CPU time of this process so far (user + system, all threads), in ms (Linux).
fn process_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // fields after the command name (which may contain spaces) start after ") "
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks * 10.0 // USER_HZ = 100
}
