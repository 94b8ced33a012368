//! Shared test helpers: a master store imported once from the fixture subset.
#![allow(dead_code)]

use chrono::NaiveDate;
use iryo_fee::calc::*;
use iryo_fee::MasterStore;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/masters")
}

/// The fixture store, imported once per test binary into a temp dir that lives for the process.
pub fn store() -> &'static MasterStore {
    static STORE: OnceLock<MasterStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let path = dir.join("fee.sqlite");
        iryo_fee::import_masters(&fixture_dir(), &path, &mut |_| {}).expect("fixture import");
        MasterStore::open(&path).expect("open store")
    })
}

pub fn d(y: i32, m: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, day).unwrap()
}

pub fn clinic() -> Facility {
    Facility {
        code: "1312345".into(),
        name: "いりょうクリニック".into(),
        prefecture: "13".into(),
        phone: "03-0000-0000".into(),
        kind: FacilityKind::Clinic,
        beds: 0,
        standards: vec![],
        pharmacist_on_staff: false,
    }
}

pub fn visit(date: NaiveDate, birth: NaiveDate, kind: VisitKind) -> VisitInput {
    VisitInput {
        id: "v1".into(),
        date,
        time_category: TimeCategory::Normal,
        patient: Patient {
            id: "p1".into(),
            name: "山田　太郎".into(),
            kana: "ﾔﾏﾀﾞ ﾀﾛｳ".into(),
            sex: Sex::Male,
            birth_date: birth,
        },
        insurance: Insurance {
            kind: InsuranceKind::Shaho,
            insurer_number: "06130012".into(),
            symbol: "12".into(),
            number: "345".into(),
            is_insured_person: true,
            burden_percent: None,
            public_expenses: vec![],
            high_cost: None,
        },
        visit_kind: kind,
        outpatient_management: true,
        procedures: vec![],
        prescription: None,
        injections: vec![],
        treatment_drugs: vec![],
        materials: vec![],
        diagnoses: vec![],
        history: vec![],
        comments: vec![],
    }
}

pub fn order(code: &str) -> ProcedureOrder {
    ProcedureOrder {
        code: code.into(),
        count: 1,
        quantity: None,
    }
}

/// Billed codes with their line totals, in line order.
pub fn billed(r: &VisitResult) -> Vec<(String, i64)> {
    r.lines
        .iter()
        .map(|l| {
            (
                l.items
                    .iter()
                    .map(|i| i.code.as_str())
                    .collect::<Vec<_>>()
                    .join("+"),
                l.total,
            )
        })
        .collect()
}

pub fn has_code(r: &VisitResult, code: &str) -> bool {
    r.lines
        .iter()
        .any(|l| l.items.iter().any(|i| i.code == code))
}

pub fn message_for<'a>(r: &'a VisitResult, rule: &str) -> Option<&'a Message> {
    r.messages.iter().find(|m| m.rule == rule)
}
