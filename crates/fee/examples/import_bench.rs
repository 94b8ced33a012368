//! Benchmark: import the full 医科 masters with every change file.
//! `cargo run --release -p iryo-fee --example import_bench -- /work/shared/fee-masters /tmp/fee.sqlite`

use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: import_bench MASTER_DIR STORE_FILE")?,
    );
    let store = PathBuf::from(
        args.next()
            .ok_or("usage: import_bench MASTER_DIR STORE_FILE")?,
    );
    let t = Instant::now();
    let report = iryo_fee::import_masters(&dir, &store, &mut |p| {
        if p.phase != iryo_fee::ImportPhase::Reading || p.done_files % 20 == 0 {
            eprintln!(
                "{:>6.2}s {:?} {}/{} {}",
                t.elapsed().as_secs_f64(),
                p.phase,
                p.done_files,
                p.total_files,
                p.file
            );
        }
    })?;
    let elapsed = t.elapsed();
    let mut kinds: Vec<_> = report.codes.iter().collect();
    kinds.sort();
    for (k, (codes, versions)) in kinds {
        println!("master {k}: {codes} codes, {versions} dated versions");
    }
    let mut tables: Vec<_> = report.tables.iter().collect();
    tables.sort();
    for (t, n) in tables {
        println!("table {t}: {n} rows");
    }
    let skipped = report.files.iter().filter(|f| !f.applied).count();
    println!(
        "files: {} ({} skipped as already contained in a full file)",
        report.files.len(),
        skipped
    );
    println!("full import: {:.2} s", elapsed.as_secs_f64());
    Ok(())
}
