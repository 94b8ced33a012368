//! Randomised visits (fixed seed) over the fixture codes: the engine never panics, and every
//! result keeps its invariants (line totals, totals, copay bounds, UKE round trip).

mod common;

use common::*;
use iryo_fee::calc::*;
use iryo_fee::uke::{build_uke, Payer, UkeFile};

/// Small deterministic generator (64-bit LCG), so failures are reproducible.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() as usize) % v.len()]
    }
}

const PROCS: &[&str] = &[
    "170000410",
    "170027910",
    "170034170",
    "140000910",
    "140000190",
    "150001010",
    "160008010",
    "160017010",
    "160017110",
    "160017410",
    "160018910",
    "160019010",
    "160019410",
    "160019510",
    "160020210",
    "160022510",
    "160000310",
    "160000410",
    "140002210",
    "140009310",
    "113041710",
    "114061210",
    "111703470",
    "111000370",
    "112011010",
    "120002370",
    "199999999",
];
const DRUGS: &[&str] = &[
    "610406079",
    "610406389",
    "610412026",
    "620000348",
    "610408075",
    "600000000",
];

#[test]
fn random_visits_keep_invariants() {
    let mut g = Lcg(20240701);
    let mut visits = Vec::new();
    for n in 0..400 {
        let date = d(2024, 7, 1 + (g.next() % 31) as u32);
        let birth = d(
            1930 + (g.next() % 95) as i32,
            1 + (g.next() % 12) as u32,
            1 + (g.next() % 28) as u32,
        );
        let birth = if birth > date { d(2020, 1, 1) } else { birth };
        let kind = *g.pick(&[VisitKind::Initial, VisitKind::Revisit, VisitKind::None]);
        let mut v = visit(date, birth, kind);
        v.id = format!("r{n}");
        v.patient.id = format!("p{}", g.next() % 40);
        v.time_category = *g.pick(&[
            TimeCategory::Normal,
            TimeCategory::Overtime,
            TimeCategory::Holiday,
            TimeCategory::LateNight,
            TimeCategory::OvertimeSpecial,
            TimeCategory::NightEarly,
        ]);
        v.insurance.kind = *g.pick(&[
            InsuranceKind::Shaho,
            InsuranceKind::Kokuho,
            InsuranceKind::Koki,
        ]);
        v.outpatient_management = !g.next().is_multiple_of(4);
        for _ in 0..(g.next() % 7) {
            let q = if g.next().is_multiple_of(3) {
                Some(format!("{}", g.next() % 500))
            } else {
                None
            };
            v.procedures.push(ProcedureOrder {
                code: g.pick(PROCS).to_string(),
                count: 1 + (g.next() % 3) as u32,
                quantity: q,
            });
        }
        if g.next().is_multiple_of(2) {
            let rps = (0..1 + g.next() % 3)
                .map(|_| {
                    let kind = *g.pick(&[RpKind::Internal, RpKind::AsNeeded, RpKind::External]);
                    let drugs = (0..1 + g.next() % 3)
                        .map(|_| DrugOrder {
                            code: g.pick(DRUGS).to_string(),
                            quantity: format!("{}.{}", 1 + g.next() % 5, g.next() % 10),
                            by_generic_name: g.next().is_multiple_of(2),
                        })
                        .collect();
                    Rp {
                        kind,
                        days: 1 + (g.next() % 60) as u32,
                        drugs,
                    }
                })
                .collect();
            v.prescription = Some(Prescription {
                mode: *g.pick(&[DispensingMode::InHouse, DispensingMode::OutOfHouse]),
                refill: g.next().is_multiple_of(5),
                psychotropic_multi: g.next().is_multiple_of(7),
                rps,
            });
        }
        if g.next().is_multiple_of(3) {
            let drugs = (0..1 + g.next() % 2)
                .map(|_| DrugOrder {
                    code: g
                        .pick(&[
                            "620005159",
                            "620004717",
                            "622345201",
                            "620009277",
                            "646320003",
                        ])
                        .to_string(),
                    quantity: format!("{}", 1 + g.next() % 3),
                    by_generic_name: false,
                })
                .collect();
            v.injections.push(Injection {
                procedure: g
                    .pick(&[
                        Some("130000510"),
                        Some("130003510"),
                        Some("130009310"),
                        None,
                    ])
                    .map(str::to_string),
                count: 1 + (g.next() % 3) as u32,
                drugs,
            });
        }
        if g.next().is_multiple_of(5) {
            v.insurance.high_cost = Some(*g.pick(&[
                HighCostCategory::U,
                HighCostCategory::E,
                HighCostCategory::O,
                HighCostCategory::General70,
            ]));
        }
        if g.next().is_multiple_of(4) {
            v.materials.push(MaterialOrder {
                code: g.pick(&["710010172", "710010173", "799999999"]).to_string(),
                quantity: "1".into(),
                shikibetsu: None,
            });
        }
        visits.push(v);
    }
    let mut facility = clinic();
    facility.pharmacist_on_staff = true;
    facility.standards = vec!["4035".into()];
    let results =
        calculate_month(store(), &facility, &visits).expect("no input errors in generated visits");
    for (v, r) in visits.iter().zip(&results) {
        assert_eq!(v.id, r.visit_id);
        for l in &r.lines {
            assert_eq!(l.total, l.points * i64::from(l.count), "{}: {l:?}", v.id);
            assert!(!l.items.is_empty() && l.count >= 1);
            assert!(!l.reason_ja.is_empty() && !l.reason_en.is_empty());
        }
        assert_eq!(r.total_points, r.lines.iter().map(|l| l.total).sum::<i64>());
        assert_eq!(r.total_yen, r.total_points * 10);
        assert!(
            r.copay_yen >= 0 && r.copay_yen <= r.total_yen + 5,
            "{}: {} > {}",
            v.id,
            r.copay_yen,
            r.total_yen
        );
        // a 高額療養費 limit need not be a multiple of 10 yen
        assert!(
            r.copay_yen % 10 == 0 || r.messages.iter().any(|m| m.rule == "high_cost_cap"),
            "{}: {}",
            v.id,
            r.copay_yen
        );
    }
    for payer in [Payer::Shaho, Payer::Kokuho] {
        let pairs: Vec<_> = visits.iter().zip(results.iter()).collect();
        let f = build_uke(&facility, payer, d(2024, 8, 1), &pairs).unwrap();
        let bytes = f.to_bytes().unwrap();
        assert_eq!(UkeFile::parse(&bytes).unwrap(), f);
    }
}
