//! Calculate one visit file against a master store and print the result as JSON.
//! `cargo run -p iryo-fee --example calc -- STORE.sqlite crates/fee/examples/visit_revisit_labs.json`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let store = args.next().ok_or("usage: calc STORE VISIT.json")?;
    let visit = args.next().ok_or("usage: calc STORE VISIT.json")?;
    let store = iryo_fee::MasterStore::open(std::path::Path::new(&store))?;
    let req: iryo_fee::CalcRequest = serde_json::from_slice(&std::fs::read(visit)?)?;
    let result = iryo_fee::calculate(&store, &req.facility, &req.visit)?;
    use std::io::Write;
    writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(&result)?
    )?;
    Ok(())
}
