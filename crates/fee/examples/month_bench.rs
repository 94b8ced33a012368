//! Benchmark: a busy clinic's month — 1,500 visits (300 patients × 5) calculated with history,
//! then written as UKE files and parsed back.
//! `cargo run --release -p iryo-fee --example month_bench -- STORE.sqlite`
//! (import first with the `import_bench` example).

use iryo_fee::calc::*;
use iryo_fee::uke::UkeFile;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store_path = std::env::args()
        .nth(1)
        .ok_or("usage: month_bench STORE.sqlite")?;
    let store = iryo_fee::MasterStore::open(std::path::Path::new(&store_path))?;
    let facility = Facility {
        code: "1312345".into(),
        name: "いりょうクリニック".into(),
        prefecture: "13".into(),
        phone: "03-0000-0000".into(),
        kind: FacilityKind::Clinic,
        beds: 0,
        standards: vec!["4035".into()],
        pharmacist_on_staff: true,
    };
    let labs = [
        "160008010",
        "160017410",
        "160018910",
        "160019010",
        "160019410",
        "160022510",
        "160000410",
    ];
    let drugs = ["610406079", "610406389", "610412026", "620000348"];
    let mut visits = Vec::new();
    for p in 0..300u32 {
        for k in 0..5u32 {
            let day = 1 + (p % 6) + k * 6;
            let date = chrono::NaiveDate::from_ymd_opt(2025, 7, day).unwrap();
            let birth =
                chrono::NaiveDate::from_ymd_opt(1940 + (p % 80) as i32, 1 + p % 12, 1 + p % 28)
                    .unwrap();
            let in_house = p % 3 != 0;
            let rp_kind = if k % 4 == 3 {
                RpKind::External
            } else {
                RpKind::Internal
            };
            let drug = if rp_kind == RpKind::External {
                drugs[3]
            } else {
                drugs[(p + k) as usize % 3]
            };
            visits.push(VisitInput {
                id: format!("v{p}-{k}"),
                date,
                time_category: if (p + k) % 17 == 0 {
                    TimeCategory::Overtime
                } else {
                    TimeCategory::Normal
                },
                patient: Patient {
                    id: format!("p{p:04}"),
                    name: "患者　太郎".into(),
                    kana: "ｶﾝｼﾞｬ ﾀﾛｳ".into(),
                    sex: if p % 2 == 0 { Sex::Male } else { Sex::Female },
                    birth_date: birth,
                },
                insurance: Insurance {
                    kind: if p % 5 == 0 {
                        InsuranceKind::Kokuho
                    } else {
                        InsuranceKind::Shaho
                    },
                    insurer_number: "06130012".into(),
                    symbol: "1".into(),
                    number: format!("{p}"),
                    is_insured_person: p % 4 != 0,
                    burden_percent: None,
                    public_expenses: vec![],
                    high_cost: None,
                },
                visit_kind: if k == 0 && p % 3 == 0 {
                    VisitKind::Initial
                } else {
                    VisitKind::Revisit
                },
                outpatient_management: true,
                procedures: if k % 2 == 0 {
                    labs[..(2 + (p as usize % 6))]
                        .iter()
                        .map(|c| ProcedureOrder {
                            code: c.to_string(),
                            count: 1,
                            quantity: None,
                        })
                        .collect()
                } else {
                    vec![]
                },
                injections: vec![],
                treatment_drugs: vec![],
                prescription: Some(Prescription {
                    mode: if in_house {
                        DispensingMode::InHouse
                    } else {
                        DispensingMode::OutOfHouse
                    },
                    refill: false,
                    psychotropic_multi: false,
                    rps: vec![Rp {
                        kind: rp_kind,
                        days: if rp_kind == RpKind::External {
                            1
                        } else {
                            14 + k * 7
                        },
                        drugs: vec![DrugOrder {
                            code: drug.into(),
                            quantity: "2".into(),
                            by_generic_name: p % 2 == 0,
                        }],
                    }],
                }),
                materials: vec![],
                diagnoses: vec![DiagnosisInput {
                    code: "5319009".into(),
                    modifiers: vec![],
                    name: None,
                    start_date: chrono::NaiveDate::from_ymd_opt(2025, 1, 10).unwrap(),
                    outcome: 1,
                    main: true,
                }],
                history: vec![],
                comments: vec![],
            });
        }
    }
    let claim_month = chrono::NaiveDate::from_ymd_opt(2025, 8, 1).unwrap();
    // Cold run (master lookups go to SQLite), then a warm run (cached lookups).
    for run in ["cold", "warm"] {
        let t = Instant::now();
        let m = iryo_fee::monthly_receipts(&store, &facility, claim_month, &visits)?;
        let elapsed = t.elapsed();
        let points: i64 = m.results.iter().map(|r| r.total_points).sum();
        let lines: usize = m.results.iter().map(|r| r.lines.len()).sum();
        let errors = m.results.iter().filter(|r| !r.is_ok()).count();
        let bytes: usize = m.files.iter().map(|f| f.1.len()).sum();
        println!("{run}: {} visits → {lines} lines, {points} points, {errors} visits with errors; {} UKE files, {bytes} bytes: {:.3} s", visits.len(), m.files.len(), elapsed.as_secs_f64());
        let t = Instant::now();
        let mut receipts = 0;
        for (_, f) in &m.files {
            receipts += UkeFile::parse(f)?.receipts.len();
        }
        println!(
            "{run}: parsed {receipts} receipts back in {:.3} s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
