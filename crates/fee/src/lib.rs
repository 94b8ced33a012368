//! 共通算定モジュール: 医科 outpatient fee calculation from the official 支払基金 masters,
//! patient copay and UKE (レセプト電算) receipts.
//!
//! Entry points (the `iryo fee` subcommands call them):
//!
//! * [`import_masters`] — `iryo fee masters import DIR`: reads the 基本マスター (医科診療行為 `s_`,
//!   医薬品 `y_`, 特定器材 `t_`, コメント `c_`, 傷病名 `b_`, 修飾語 `z_`; CP932 CSV, plain or zipped)
//!   and the 医科電子点数表 tables, applies the change files in date order keeping every dated
//!   version, and writes a SQLite store atomically. [`MasterStore::price_on`] then answers what a
//!   code was worth on a date.
//! * [`calculate`] / [`calculate_month`] — `iryo fee calc VISIT.json`: one visit (or a month of
//!   visits) in, every billed line with its 診療識別, points, count and reason out, plus total
//!   points and the copay (1点 = 10円, 四捨五入 to 10 yen).
//! * [`monthly_receipts`] / [`uke::UkeFile`] — `iryo fee receipt`: the month's UKE file in CP932,
//!   and a parser of it.
//! * [`fhir::visits_from_bundle`] / [`fhir::visits_from_resources`] — FHIR R4 Encounter, Patient,
//!   Coverage, ChargeItem, MedicationRequest and Condition resources → [`VisitInput`]s (the
//!   convention is in `docs/FEE.md`, "FHIR mapping").
//!
//! ```no_run
//! use std::path::Path;
//! use iryo_fee::{import_masters, calculate, CalcRequest, MasterStore};
//!
//! # fn main() -> iryo_fee::Result<()> {
//! let report = import_masters(Path::new("/data/fee-masters"), Path::new("/data/fee.sqlite"), &mut |p| {
//!     eprintln!("{:?} {}/{} {}", p.phase, p.done_files, p.total_files, p.file);
//! })?;
//! let store = MasterStore::open(Path::new("/data/fee.sqlite"))?;
//! let date = chrono::NaiveDate::from_ymd_opt(2024, 6, 1).unwrap();
//! let shoshin = store.price_on("111000110", date)?; // 初診料 291点 from 2024-06-01
//! let req: CalcRequest = serde_json::from_str(&std::fs::read_to_string("visit.json").unwrap()).unwrap();
//! let result = calculate(&store, &req.facility, &req.visit)?;
//! println!("{} points, copay {} yen", result.total_points, result.copay_yen);
//! # Ok(()) }
//! ```
//!
//! The model (剤, 診療識別, dated masters) is explained in `docs/FEE.md`.

pub mod calc;
pub mod error;
pub mod fhir;
pub mod master;
pub mod num;
pub mod uke;
mod zipread;

pub use calc::{
    calculate, calculate_month, CalcRequest, Facility, Line, Message, VisitInput, VisitResult,
};
pub use error::{FeeError, Result};
pub use master::{
    import_masters, ImportPhase, ImportProgress, ImportReport, MasterKind, MasterRecord,
    MasterStore, PriceOn,
};

/// A month of calculated visits and its UKE files, one per 審査支払機関 that has receipts.
pub struct MonthlyReceipts {
    /// One result per input visit, in input order.
    pub results: Vec<VisitResult>,
    /// `(payer, CP932 file bytes)`: 社保 (支払基金) and/or 国保 (国保連合会).
    pub files: Vec<(uke::Payer, Vec<u8>)>,
}

/// Calculate a month of visits (history carried between each patient's visits) and write the UKE
/// files. `claim_month` is the 請求年月 (any day of it); visits must all be in one service month.
pub fn monthly_receipts(
    store: &MasterStore,
    facility: &Facility,
    claim_month: chrono::NaiveDate,
    visits: &[VisitInput],
) -> Result<MonthlyReceipts> {
    let results = calculate_month(store, facility, visits)?;
    let pairs: Vec<(&VisitInput, &VisitResult)> = visits.iter().zip(results.iter()).collect();
    let mut files = Vec::new();
    for payer in [uke::Payer::Shaho, uke::Payer::Kokuho] {
        let file = uke::build_uke(facility, payer, claim_month, &pairs)?;
        if !file.receipts.is_empty() {
            files.push((payer, file.to_bytes()?));
        }
    }
    Ok(MonthlyReceipts { results, files })
}
