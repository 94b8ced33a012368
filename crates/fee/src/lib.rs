//! 共通算定モジュール: 医科 outpatient fee calculation from the official 支払基金 masters,
//! copay and UKE receipts.
//!
//! Placeholder docs; full documentation follows.

pub mod calc;
pub mod error;
pub mod master;
pub mod num;
mod zipread;

pub use calc::{calculate, CalcRequest, Facility, Line, Message, VisitInput, VisitResult};
pub use error::{FeeError, Result};
pub use master::{
    import_masters, ImportPhase, ImportProgress, ImportReport, MasterKind, MasterRecord,
    MasterStore, PriceOn,
};
