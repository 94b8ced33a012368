//! Worked examples for every calculation rule. Point values are those of the fixture master rows
//! (copied unchanged from the official R6 files); the arithmetic is written next to each assert.

mod common;

use common::*;
use iryo_fee::calc::*;
use iryo_fee::{calculate, calculate_month, FeeError};

fn adult() -> chrono::NaiveDate {
    d(1980, 1, 1)
}

fn calc(v: &VisitInput) -> VisitResult {
    calculate(store(), &clinic(), v).unwrap()
}

// ---- 初診料・再診料・外来診療料 ----------------------------------------------------------

#[test]
fn initial_visit_adult() {
    let r = calc(&visit(d(2024, 7, 1), adult(), VisitKind::Initial));
    // 初診料 291点 (111000110). Copay 30%: 291 × 10 × 0.3 = 873円 → 870円 (3 < 5 dropped).
    assert_eq!(billed(&r), vec![("111000110".into(), 291)]);
    assert_eq!(r.lines[0].shikibetsu, 11);
    assert_eq!(
        (r.total_points, r.burden_percent, r.total_yen, r.copay_yen),
        (291, 30, 2910, 870)
    );
    assert!(r.is_ok());
}

#[test]
fn initial_fee_follows_the_dated_master() {
    // On 2024-05-31 (before R6) 初診料 was 288点 (旧点数 of the R6 row).
    let r = calc(&visit(d(2024, 5, 31), adult(), VisitKind::Initial));
    assert_eq!(r.total_points, 288);
}

#[test]
fn initial_visit_infant_gets_age_addition() {
    // Age 3: 初診料 291 + 乳幼児加算（初診） 75 (年齢加算 cols 100-111: 00–06) = 366点.
    // 未就学 → 20%: 3,660 × 0.2 = 732円 → 730円.
    let r = calc(&visit(d(2024, 7, 1), d(2021, 5, 1), VisitKind::Initial));
    assert_eq!(
        billed(&r),
        vec![("111000110".into(), 291), ("111000370".into(), 75)]
    );
    assert_eq!(
        (r.total_points, r.burden_percent, r.copay_yen),
        (366, 20, 730)
    );
}

#[test]
fn time_additions_initial() {
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::Initial);
    // 休日: 時間加算区分 3 (初診料の休日加算) 111000670 250点 → 291 + 250 = 541.
    v.time_category = TimeCategory::Holiday;
    assert_eq!(
        billed(&calc(&v)),
        vec![("111000110".into(), 291), ("111000670".into(), 250)]
    );
    // 時間外 111000570 85点 → 376; 深夜 111000770 480点 → 771.
    v.time_category = TimeCategory::Overtime;
    assert_eq!(calc(&v).total_points, 291 + 85);
    v.time_category = TimeCategory::LateNight;
    assert_eq!(calc(&v).total_points, 291 + 480);
}

#[test]
fn infant_late_night_replaces_the_infant_addition() {
    // Age 3, 深夜: the age-specific 乳幼児深夜加算（初診） 111012170 695点 is chosen over the
    // general 深夜加算 (480) and over the 小児科 variant (項番 007); 乳幼児加算 is not added
    // (A000 注6). 291 + 695 = 986点.
    let mut v = visit(d(2024, 7, 1), d(2021, 5, 1), VisitKind::Initial);
    v.time_category = TimeCategory::LateNight;
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![("111000110".into(), 291), ("111012170".into(), 695)]
    );
    assert!(message_for(&r, "infant_addition").is_some());
}

#[test]
fn revisit_overtime_adult() {
    // 再診料 75 + 時間外加算（再診） 65 + 外来管理加算 52 = 192点; 30%: 576円 → 580円.
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::Revisit);
    v.time_category = TimeCategory::Overtime;
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![
            ("112007410".into(), 75),
            ("112001110".into(), 65),
            ("112011010".into(), 52)
        ]
    );
    assert_eq!(r.lines[1].shikibetsu, 12);
    assert_eq!((r.total_points, r.copay_yen), (192, 580));
}

#[test]
fn revisit_infant_holiday() {
    // Age 3, 休日: 乳幼児休日加算（再診） 112014870 260点 (項番 004, before the 小児科 variant
    // 112014270 of 項番 005). 75 + 260 + 外来管理加算 52 = 387点; no 乳幼児加算 38.
    let mut v = visit(d(2024, 7, 1), d(2021, 5, 1), VisitKind::Revisit);
    v.time_category = TimeCategory::Holiday;
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![
            ("112007410".into(), 75),
            ("112014870".into(), 260),
            ("112011010".into(), 52)
        ]
    );
}

#[test]
fn revisit_infant_normal_hours() {
    // Age 3: 75 + 乳幼児加算（再診） 38 + 外来管理加算 52 = 165点.
    let r = calc(&visit(d(2024, 7, 1), d(2021, 5, 1), VisitKind::Revisit));
    assert_eq!(r.total_points, 165);
    assert!(has_code(&r, "112000970"));
}

#[test]
fn night_early_addition_is_for_clinics_only() {
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::Revisit);
    v.time_category = TimeCategory::NightEarly;
    // Clinic: 夜間・早朝等加算 112015570 50点 (病院・診療所区分 2). 75 + 50 + 52 = 177.
    assert_eq!(calc(&v).total_points, 177);
    // Hospital (100 beds): not applicable → warning, 75 + 52 = 127.
    let mut h = clinic();
    h.kind = FacilityKind::Hospital;
    h.beds = 100;
    let r = calculate(store(), &h, &v).unwrap();
    assert_eq!(r.total_points, 127);
    assert_eq!(
        message_for(&r, "time_addition").map(|m| m.level),
        Some(Level::Warning)
    );
}

#[test]
fn large_hospital_bills_outpatient_consultation_fee() {
    // ≥ 200 beds: 外来診療料 112011310 76点 instead of 再診料; 外来管理加算 cannot be added.
    let mut h = clinic();
    h.kind = FacilityKind::Hospital;
    h.beds = 400;
    let r = calculate(
        store(),
        &h,
        &visit(d(2024, 7, 1), adult(), VisitKind::Revisit),
    )
    .unwrap();
    assert_eq!(billed(&r), vec![("112011310".into(), 76)]);
    assert!(message_for(&r, "outpatient_management").is_some());
}

// ---- 外来管理加算 --------------------------------------------------------------------------

#[test]
fn outpatient_management_refused_with_a_treatment() {
    // 消炎鎮痛等処置（湿布処置） 140002210 has 外来管理加算区分 1: 75 + 35 = 110点, no 52.
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::Revisit);
    v.procedures = vec![order("140002210")];
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![("112007410".into(), 75), ("140002210".into(), 35)]
    );
    assert_eq!(r.lines[1].shikibetsu, 40);
    let m = message_for(&r, "outpatient_management").unwrap();
    assert!(m.message_ja.contains("湿布処置"), "{}", m.message_ja);
    // Not requested → not billed, no message.
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::Revisit);
    v.outpatient_management = false;
    assert_eq!(calc(&v).total_points, 75);
}

// ---- きざみ・点数 ------------------------------------------------------------------------------

#[test]
fn step_priced_procedure() {
    // 人工呼吸 140009310: 302点, きざみ lower 30, upper 300, step 30 分, +50点.
    // 95分: 302 + ceil((95 − 30) / 30) = 3 × 50 = 452点.
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::None);
    v.procedures = vec![ProcedureOrder {
        code: "140009310".into(),
        count: 1,
        quantity: Some("95".into()),
    }];
    assert_eq!(calc(&v).total_points, 452);
    // 400分 is capped at 300: 302 + ceil(270 / 30) = 9 × 50 = 752点, with a warning.
    v.procedures[0].quantity = Some("400".into());
    let r = calc(&v);
    assert_eq!(r.total_points, 752);
    assert_eq!(
        message_for(&r, "step_value").map(|m| m.level),
        Some(Level::Warning)
    );
    // Without a quantity: error, nothing billed.
    v.procedures[0].quantity = None;
    let r = calc(&v);
    assert_eq!(r.total_points, 0);
    assert!(!r.is_ok());
}

// ---- 検体検査: 包括 and 判断料 -------------------------------------------------------------

fn labs(codes: &[&str]) -> VisitInput {
    let mut v = visit(d(2024, 7, 10), adult(), VisitKind::None);
    v.procedures = codes.iter().map(|c| order(c)).collect();
    v
}

#[test]
fn four_chemistry_items_are_billed_one_by_one() {
    // TP 11 + Alb 11 + BUN 11 + AST 17 = 50; + 生化学的検査（１）判断料 144 = 194点.
    let r = calc(&labs(&["160017410", "160018910", "160019010", "160022510"]));
    assert_eq!(r.total_points, 50 + 144);
    assert_eq!(r.lines.len(), 5);
}

#[test]
fn five_chemistry_items_are_bundled() {
    // 5 items of 包括対象検査 1: 93点 "所定点数にかかわらず" (item sum 11+11+11+11+17 = 61).
    // + 判断料 144 = 237点.
    let r = calc(&labs(&[
        "160017410",
        "160018910",
        "160019010",
        "160019410",
        "160022510",
    ]));
    assert_eq!(r.total_points, 93 + 144);
    let bundle = r.lines.iter().find(|l| l.rule == "lab_bundle").unwrap();
    assert_eq!(
        (bundle.items.len(), bundle.points, bundle.shikibetsu),
        (5, 93, 60)
    );
    assert!(bundle.reason_ja.contains("個別合計61点"));
}

#[test]
fn nine_chemistry_items_use_the_second_step() {
    // 8–9 items: 99点. + 144 = 243.
    let r = calc(&labs(&[
        "160017010",
        "160017110",
        "160017410",
        "160018910",
        "160019010",
        "160019410",
        "160019510",
        "160020210",
        "160022510",
    ]));
    assert_eq!(r.total_points, 99 + 144);
}

#[test]
fn judgement_fees_per_group_once_a_month() {
    // 末梢血液一般 21 (group 2 → 血液学的検査判断料 125), 尿蛋白 7 (group 1 → 尿・糞便等検査判断料 34),
    // 尿一般 26 (D000, 検査等実施判断区分 0 → no 判断料). 21 + 7 + 26 + 125 + 34 = 213.
    let r = calc(&labs(&["160008010", "160000410", "160000310"]));
    assert_eq!(r.total_points, 213);
    assert!(has_code(&r, "160061810") && has_code(&r, "160061710"));
    // Same month, already billed on 07-01: only the 実施料 (21).
    let mut v = labs(&["160008010"]);
    v.history = vec![HistoryLine {
        date: d(2024, 7, 1),
        code: "160061810".into(),
        count: 1,
    }];
    let r = calc(&v);
    assert_eq!(r.total_points, 21);
    assert!(message_for(&r, "judgement_monthly").is_some());
    // Billed in June: July bills it again (21 + 125).
    v.history[0].date = d(2024, 6, 28);
    assert_eq!(calc(&v).total_points, 146);
}

// ---- 投薬 ------------------------------------------------------------------------------------

fn rx(mode: DispensingMode, rps: Vec<Rp>) -> Option<Prescription> {
    Some(Prescription {
        mode,
        refill: false,
        psychotropic_multi: false,
        rps,
    })
}

fn rp(kind: RpKind, days: u32, drugs: &[(&str, &str)]) -> Rp {
    Rp {
        kind,
        days,
        drugs: drugs
            .iter()
            .map(|(c, q)| DrugOrder {
                code: c.to_string(),
                quantity: q.to_string(),
                by_generic_name: false,
            })
            .collect(),
    }
}

#[test]
fn in_house_prescription() {
    // ガスター散２％ 16.50円/g × 3g = 49.50円 → ceil((49.50 − 15) / 10) + 1 = 5点 × 14日 = 70.
    // 調剤料（内服） 11 + 処方料（その他） 42. Revisit 75 + 外来管理加算 52 → 250点.
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::Revisit);
    v.prescription = rx(
        DispensingMode::InHouse,
        vec![rp(RpKind::Internal, 14, &[("610406079", "3")])],
    );
    let r = calc(&v);
    let drug = r.lines.iter().find(|l| l.rule == "drug").unwrap();
    assert_eq!(
        (drug.shikibetsu, drug.points, drug.count, drug.total),
        (21, 5, 14, 70)
    );
    assert!(drug.reason_ja.contains("49.5円"));
    assert!(has_code(&r, "120000710") && has_code(&r, "120001210"));
    assert_eq!(r.total_points, 250);
    // With a pharmacist: + 調剤技術基本料 14 (月1回) = 264; not again if billed this month.
    let mut f = clinic();
    f.pharmacist_on_staff = true;
    assert_eq!(calculate(store(), &f, &v).unwrap().total_points, 264);
    v.history = vec![HistoryLine {
        date: d(2024, 7, 1),
        code: "120001810".into(),
        count: 1,
    }];
    v.date = d(2024, 7, 8);
    assert_eq!(calculate(store(), &f, &v).unwrap().total_points, 250);
}

#[test]
fn cheap_psychotropic_drug_is_one_point_with_narcotic_additions() {
    // エチゾラム 6.40円 × 2錠 = 12.80円 ≤ 15円 → 1点 × 7日 = 7. 向精神薬 (col 14 = 5):
    // 麻薬等加算（調剤料） 1 + （処方料） 1. 7 + 11 + 1 + 42 + 1 = 62点 (no visit fee).
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::None);
    v.prescription = rx(
        DispensingMode::InHouse,
        vec![rp(RpKind::Internal, 7, &[("610412026", "2")])],
    );
    let r = calc(&v);
    assert!(has_code(&r, "120000110") && has_code(&r, "120001310"));
    assert_eq!(r.total_points, 62);
}

#[test]
fn external_drug() {
    // アクアチム軟膏 22.10円/g × 10g = 221円 → ceil(20.6) + 1 = 22点 × 1; 調剤料（外用） 8; 処方料 42.
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::None);
    v.prescription = rx(
        DispensingMode::InHouse,
        vec![rp(RpKind::External, 1, &[("620000348", "10")])],
    );
    let r = calc(&v);
    let drug = r.lines.iter().find(|l| l.rule == "drug").unwrap();
    assert_eq!((drug.shikibetsu, drug.total), (23, 22));
    assert!(has_code(&r, "120001010"));
    assert_eq!(r.total_points, 22 + 8 + 42);
}

#[test]
fn seven_internal_drugs_change_the_prescribing_fee() {
    // 1g each: 1.54 + 4.61 + 7.20 + 392.40 + 1.50 + 1.50 + 5.69 = 414.44円
    // → ceil((414.44 − 15) / 10) = 40, + 1 = 41点 × 7日 = 287. 処方料（７種類以上） 29, 調剤料 11.
    let drugs: Vec<(&str, &str)> = [
        "610408072",
        "610408073",
        "610408074",
        "610408075",
        "610408076",
        "610408077",
        "610408078",
    ]
    .iter()
    .map(|c| (*c, "1"))
    .collect();
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::None);
    v.prescription = rx(
        DispensingMode::InHouse,
        vec![rp(RpKind::Internal, 7, &drugs)],
    );
    let r = calc(&v);
    assert!(has_code(&r, "120002610"), "{:?}", billed(&r));
    assert_eq!(r.total_points, 287 + 29 + 11);
    // Out of house: 処方箋料（７種類以上） 32, no drug lines.
    v.prescription.as_mut().unwrap().mode = DispensingMode::OutOfHouse;
    assert_eq!(billed(&calc(&v)), vec![("120002710".into(), 32)]);
}

#[test]
fn prescription_slip_with_infant_and_generic_name_additions() {
    // Age 2, 院外: 処方箋料 60 + 乳幼児加算（処方箋料） 3 (< 3歳) + 一般名処方加算２ 8
    // (one of the two eligible drugs by 一般名) = 71点. Drug prices are not billed.
    let mut v = visit(d(2024, 7, 1), d(2022, 1, 1), VisitKind::None);
    let mut p = rp(
        RpKind::Internal,
        5,
        &[("610406389", "1"), ("610406079", "1")],
    );
    p.drugs[0].by_generic_name = true;
    v.prescription = rx(DispensingMode::OutOfHouse, vec![p]);
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![
            ("120002910".into(), 60),
            ("120002470".into(), 3),
            ("120003570".into(), 8)
        ]
    );
    assert_eq!(r.lines[0].shikibetsu, 80);
    // Both by 一般名 → 一般名処方加算１ 10: 73点.
    v.prescription.as_mut().unwrap().rps[0].drugs[1].by_generic_name = true;
    assert_eq!(calc(&v).total_points, 73);
}

#[test]
fn specific_disease_prescribing_addition() {
    // Main disease 胃潰瘍 (傷病名マスター col 21 = 05) and a 28-day 内服: 特定疾患処方管理加算 56.
    // ガスター 1g = 16.50円 → ceil(0.15) + 1 = 2点 × 28 = 56; 調剤料 11; 処方料 42 → 165点.
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::None);
    v.diagnoses = vec![DiagnosisInput {
        code: "5319009".into(),
        modifiers: vec![],
        name: None,
        start_date: d(2024, 6, 1),
        outcome: 1,
        main: true,
    }];
    v.prescription = rx(
        DispensingMode::InHouse,
        vec![rp(RpKind::Internal, 28, &[("610406079", "1")])],
    );
    let r = calc(&v);
    assert!(has_code(&r, "120005610"));
    assert_eq!(r.total_points, 56 + 11 + 42 + 56);
    // 27 days: no addition (2 × 27 = 54 + 11 + 42 = 107).
    v.prescription.as_mut().unwrap().rps[0].days = 27;
    assert_eq!(calc(&v).total_points, 107);
}

// ---- 特定保険医療材料 ------------------------------------------------------------------------

#[test]
fn material_price_to_points() {
    // 710010172: 9,232円 × 0.5 = 4,616円 ÷ 10 = 461.6 → 四捨五入 462点.
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::None);
    v.materials = vec![MaterialOrder {
        code: "710010172".into(),
        quantity: "0.5".into(),
        shikibetsu: None,
    }];
    let r = calc(&v);
    assert_eq!((r.lines[0].shikibetsu, r.total_points), (40, 462));
}

// ---- 背反・算定回数・年齢 ------------------------------------------------------------------

#[test]
fn same_month_exclusion_keeps_the_item_the_table_names() {
    // 03-2: 初診料 vs 生活習慣病管理料１ (113041710), 背反区分 1 → bill 初診料 only: 291点.
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::Initial);
    v.procedures = vec![order("113041710")];
    let r = calc(&v);
    assert_eq!(r.total_points, 291);
    assert!(message_for(&r, "exclusion")
        .unwrap()
        .message_ja
        .contains("生活習慣病管理料１"));
    // 初診料 billed on 07-01; on 07-10 the 113041710 row says 背反区分 2 (bill 初診料): refused.
    let mut v = visit(d(2024, 7, 10), adult(), VisitKind::Revisit);
    v.outpatient_management = false;
    v.procedures = vec![order("113041710")];
    v.history = vec![HistoryLine {
        date: d(2024, 7, 1),
        code: "111000110".into(),
        count: 1,
    }];
    assert_eq!(calc(&v).total_points, 75);
}

#[test]
fn inclusion_table_refuses_included_children() {
    // The R6 02包括テーブル is not in the shared data (over the snapshot size limit), so this test
    // adds ONE SYNTHETIC row to exercise the mechanism: group A000001 (the 補助 table's real 包括
    // group of 初診料, 包括単位 2 = 同一月内) includes ＴＰ 160017410.
    let masters = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), masters.path().join(e.file_name())).unwrap();
    }
    let row = "\"0\",\"A000001\",\"160017410\",\"ＴＰ\",\"0\",\"20100401\",\"99999999\"\r\n";
    std::fs::write(
        masters.path().join("02包括テーブル.csv"),
        encoding_rs::SHIFT_JIS.encode(row).0,
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("fee.sqlite");
    let report = iryo_fee::import_masters(masters.path(), &path, &mut |_| {}).unwrap();
    assert_eq!(report.tables.get("inclusion"), Some(&1));
    let s = iryo_fee::MasterStore::open(&path).unwrap();
    // 初診 + ＴＰ: ＴＰ is included → 291点; its 判断料 is dropped with it.
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::Initial);
    v.procedures = vec![order("160017410"), order("160022510")];
    let r = calculate(&s, &clinic(), &v).unwrap();
    // 291 + ＡＳＴ 17 + 生化学（１）判断料 144 (ＡＳＴ still needs it) = 452.
    assert_eq!(r.total_points, 291 + 17 + 144);
    assert!(!has_code(&r, "160017410"));
    assert!(message_for(&r, "inclusion")
        .unwrap()
        .message_ja
        .contains("包括"));
    v.procedures = vec![order("160017410")];
    let r = calculate(&s, &clinic(), &v).unwrap();
    assert_eq!(billed(&r), vec![("111000110".into(), 291)]);
}

#[test]
fn same_time_exclusion_can_drop_the_visit_fee() {
    // 03-3: 初診料 vs 外来在宅共同指導料２ (114061210), 背反区分 2 → bill 114061210 600点 only.
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::Initial);
    v.procedures = vec![order("114061210")];
    let r = calc(&v);
    assert_eq!(billed(&r), vec![("114061210".into(), 600)]);
}

#[test]
fn count_limit_per_day() {
    // 05: 湿布処置 140002210 121 日 1回. Count 2 → reduced to 1: 35点.
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::None);
    v.procedures = vec![ProcedureOrder {
        code: "140002210".into(),
        count: 2,
        quantity: None,
    }];
    let r = calc(&v);
    assert_eq!((r.total_points, r.lines[0].count), (35, 1));
    assert_eq!(
        message_for(&r, "count_limit").map(|m| m.level),
        Some(Level::Warning)
    );
    // Already billed earlier the same day → refused.
    v.procedures[0].count = 1;
    v.history = vec![HistoryLine {
        date: d(2024, 7, 1),
        code: "140002210".into(),
        count: 1,
    }];
    assert_eq!(calc(&v).total_points, 0);
}

#[test]
fn age_limits_and_unknown_codes_are_errors() {
    // 乳幼児加算（初診） has 上限年齢 06: refused for an adult.
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::None);
    v.procedures = vec![order("111000370"), order("199999999"), order("160017410")];
    let r = calc(&v);
    assert!(!r.is_ok());
    let errs: Vec<_> = r
        .messages
        .iter()
        .filter(|m| m.level == Level::Error)
        .map(|m| m.rule.as_str())
        .collect();
    assert_eq!(errs, vec!["applicability", "unknown_code"]);
    // TP 11 + 判断料 144 still billed.
    assert_eq!(r.total_points, 155);
}

#[test]
fn facility_standard_is_required() {
    // 医療ＤＸ推進体制整備加算１（初診） 111703470 (2024-10-01, 施設基準 4035).
    let mut v = visit(d(2024, 11, 1), adult(), VisitKind::Initial);
    v.procedures = vec![order("111703470")];
    let r = calc(&v);
    assert_eq!(r.total_points, 291);
    assert!(r.messages.iter().any(|m| m.message_ja.contains("4035")));
    let mut f = clinic();
    f.standards = vec!["4035".into()];
    // 291 + 11 = 302.
    assert_eq!(calculate(store(), &f, &v).unwrap().total_points, 302);
}

#[test]
fn additions_need_their_base_and_one_per_sequence() {
    let mut f = clinic();
    f.standards = vec!["4035".into()];
    // 医療ＤＸ推進体制整備加算 (注加算コード 1101 = 初診料) on a 再診: refused, 75点 only.
    let mut v = visit(d(2024, 11, 1), adult(), VisitKind::Revisit);
    v.outpatient_management = false;
    v.procedures = vec![order("111703470")];
    let r = calculate(store(), &f, &v).unwrap();
    assert_eq!(r.total_points, 75);
    assert_eq!(
        message_for(&r, "addition_base").map(|m| m.level),
        Some(Level::Error)
    );
    // On a 初診, 加算１ (11) and 加算２ (10) share 通番 A: only the first is billed. 291 + 11 = 302.
    let mut v = visit(d(2024, 11, 1), adult(), VisitKind::Initial);
    v.procedures = vec![order("111703470"), order("111703570")];
    let r = calculate(store(), &f, &v).unwrap();
    assert_eq!(r.total_points, 302);
    assert!(message_for(&r, "addition_sequence").is_some());
}

#[test]
fn visit_fee_codes_belong_in_visit_kind() {
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::Revisit);
    v.outpatient_management = false;
    v.procedures = vec![order("112007410")];
    let r = calc(&v);
    assert_eq!(r.total_points, 75);
    assert_eq!(
        message_for(&r, "visit_fee").map(|m| m.level),
        Some(Level::Error)
    );
}

#[test]
fn comments_are_checked_against_the_comment_master() {
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::Revisit);
    v.comments = vec![
        // パターン20 (fixed text): no data.
        CommentInput {
            code: "820100001".into(),
            text: String::new(),
            shikibetsu: Some(12),
        },
        // パターン30 (fixed text + free text): data required; given.
        CommentInput {
            code: "830000052".into(),
            text: "疼痛が強いため".into(),
            shikibetsu: None,
        },
        // パターン30 without its data: error.
        CommentInput {
            code: "830000052".into(),
            text: " ".into(),
            shikibetsu: None,
        },
        CommentInput {
            code: "899999999".into(),
            text: String::new(),
            shikibetsu: None,
        },
    ];
    let r = calc(&v);
    assert_eq!(r.comments.len(), 2);
    assert_eq!(
        (r.comments[0].shikibetsu, r.comments[0].text.as_str()),
        (12, "")
    );
    assert_eq!(
        (r.comments[1].shikibetsu, r.comments[1].text.as_str()),
        (80, "疼痛が強いため")
    );
    let errs: Vec<_> = r
        .messages
        .iter()
        .filter(|m| m.level == Level::Error)
        .map(|m| m.rule.as_str())
        .collect();
    assert_eq!(errs, vec!["comment", "unknown_code"]);
}

// ---- month, copay, input errors ------------------------------------------------------------

#[test]
fn month_carries_history_between_visits() {
    // Two visits in July with AST: 判断料 144 only on the first. 17 + 144 and then 17.
    let mut a = labs(&["160022510"]);
    a.date = d(2024, 7, 2);
    let mut b = a.clone();
    b.id = "v2".into();
    b.date = d(2024, 7, 20);
    let rs = calculate_month(store(), &clinic(), &[b.clone(), a.clone()]).unwrap();
    assert_eq!((rs[0].visit_id.as_str(), rs[0].total_points), ("v2", 17));
    assert_eq!(rs[1].total_points, 161);
}

#[test]
fn public_expense_share_and_cap() {
    // 再診料 75 + 外来管理加算 52 = 127点 = 1,270円. Insurance 30%: 381円 → 380円.
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::Revisit);
    v.insurance.public_expenses = vec![PublicExpense {
        payer_number: "54136015".into(),
        recipient_number: "1234567".into(),
        burden_percent: 10,
        cap_yen: None,
        monthly_cap_yen: None,
    }];
    let r = calc(&v);
    // 公費 share 10%: 127円 → 130円; the 公費 pays 380 − 130 = 250円.
    assert_eq!(
        (r.insurance_copay_yen, r.copay_yen, r.public_expense_yen),
        (380, 130, 250)
    );
    // With a 100円 cap per visit: the patient pays 100円, the 公費 280円.
    v.insurance.public_expenses[0].cap_yen = Some(100);
    let r = calc(&v);
    assert_eq!((r.copay_yen, r.public_expense_yen), (100, 280));
    // Fully covered (0%): nothing at the counter.
    v.insurance.public_expenses[0].burden_percent = 0;
    assert_eq!(calc(&v).copay_yen, 0);
    // Bad 公費負担者番号 or two 公費: input errors.
    v.insurance.public_expenses[0].payer_number = "5413".into();
    assert!(calculate(store(), &clinic(), &v).is_err());
    v.insurance.public_expenses = vec![
        PublicExpense {
            payer_number: "54136015".into(),
            ..Default::default()
        };
        2
    ];
    assert!(calculate(store(), &clinic(), &v).is_err());
}

#[test]
fn public_expense_monthly_cap_across_visits() {
    // Three revisits of 127点 with a 公費 of 10% (130円 each) and a 月額上限 of 300円:
    // 130 + 130 + 40 (300 − 260) = 300円; the third visit's 公費 pays 380 − 40 = 340円.
    let mut a = visit(d(2024, 7, 1), adult(), VisitKind::Revisit);
    a.insurance.public_expenses = vec![PublicExpense {
        payer_number: "54136015".into(),
        recipient_number: "1234567".into(),
        burden_percent: 10,
        cap_yen: None,
        monthly_cap_yen: Some(300),
    }];
    let mut b = a.clone();
    b.date = d(2024, 7, 8);
    let mut c = a.clone();
    c.date = d(2024, 7, 15);
    let rs = calculate_month(store(), &clinic(), &[c, a, b]).unwrap();
    let copays: Vec<i64> = rs.iter().map(|r| r.copay_yen).collect();
    assert_eq!(copays, vec![40, 130, 130]);
    assert_eq!(rs[0].public_expense_yen, 340);
    assert!(message_for(&rs[0], "public_expense_monthly_cap").is_some());
}

#[test]
fn default_burden_by_age_and_insurance() {
    // 72歳 (70th birthday 2022-03-15, 2割 from 2022-04-01): 20%.
    let v = visit(d(2024, 7, 1), d(1952, 3, 15), VisitKind::Revisit);
    assert_eq!(default_burden(&v), 20);
    // 76歳: 10%. 後期高齢者: 10%. 40歳: 30%. 5歳 (未就学): 20%.
    assert_eq!(
        default_burden(&visit(d(2024, 7, 1), d(1948, 1, 1), VisitKind::Revisit)),
        10
    );
    let mut k = visit(d(2024, 7, 1), d(1949, 1, 1), VisitKind::Revisit);
    k.insurance.kind = InsuranceKind::Koki;
    assert_eq!(default_burden(&k), 10);
    assert_eq!(
        default_burden(&visit(d(2024, 7, 1), adult(), VisitKind::Revisit)),
        30
    );
    assert_eq!(
        default_burden(&visit(d(2024, 7, 1), d(2019, 1, 1), VisitKind::Revisit)),
        20
    );
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let v = visit(d(2024, 7, 1), d(2025, 1, 1), VisitKind::Initial);
    assert!(matches!(
        calculate(store(), &clinic(), &v),
        Err(FeeError::InvalidInput { .. })
    ));
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::Initial);
    v.insurance.burden_percent = Some(25);
    assert!(calculate(store(), &clinic(), &v).is_err());
    let mut v = visit(d(2024, 7, 1), adult(), VisitKind::None);
    v.procedures = vec![ProcedureOrder {
        code: "160017410".into(),
        count: 0,
        quantity: None,
    }];
    assert!(calculate(store(), &clinic(), &v).is_err());
    v.procedures.clear();
    v.prescription = rx(
        DispensingMode::InHouse,
        vec![rp(RpKind::Internal, 7, &[("610406079", "abc")])],
    );
    let e = calculate(store(), &clinic(), &v).unwrap_err();
    assert!(e
        .message_ja()
        .contains("prescription.rps[0].drugs[0].quantity"));
    // JSON with an unknown field is rejected by the input types.
    assert!(serde_json::from_str::<CalcRequest>(
        r#"{"facility":{"kind":"clinic","bogus":1},"visit":{}}"#
    )
    .is_err());
}

#[test]
fn example_files_parse_and_calculate() {
    for name in [
        "visit_revisit_labs.json",
        "visit_initial_infant_night.json",
        "visit_out_of_house.json",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        let req: CalcRequest = serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = calculate(store(), &req.facility, &req.visit).unwrap();
        assert!(r.total_points > 0, "{name}");
    }
}

// ---- 画像: 写真診断・撮影 (きざみ = 2枚目から 100分の50), 電子画像管理加算, 年齢加算 (%) ---------

fn qty(code: &str, q: &str) -> ProcedureOrder {
    ProcedureOrder {
        code: code.into(),
        count: 1,
        quantity: Some(q.into()),
    }
}

#[test]
fn chest_x_ray_two_films_digital() {
    // 胸部 2 枚 デジタル撮影, adult:
    //   写真診断 単純撮影（イ） 170000410: 85 + ceil((2−1)/1) × 42.5 = 127.5 → 128 (四捨五入)
    //   単純撮影（デジタル） 170027910: 68 + 1 × 34 = 102
    //   電子画像管理加算（単純撮影） 170000210: 57
    //   = 287 点 (画像 診療識別 70)
    let mut v = visit(d(2024, 7, 10), adult(), VisitKind::None);
    v.procedures = vec![
        qty("170000410", "2"),
        qty("170027910", "2"),
        order("170000210"),
    ];
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![
            ("170000410".into(), 128),
            ("170027910".into(), 102),
            ("170000210".into(), 57)
        ]
    );
    assert!(r.lines.iter().all(|l| l.shikibetsu == 70));
    assert!(
        r.lines[0].reason_ja.contains("42.5"),
        "{}",
        r.lines[0].reason_ja
    );
    assert_eq!(r.total_points, 287);
}

#[test]
fn x_ray_age_additions_are_percentages_of_the_filming() {
    // Age 2 (乳幼児, 生後28日–3歳): 撮影 102 × 50/100 = 51 (170017270, 撮影 cols 103-105).
    let mut v = visit(d(2024, 7, 10), d(2022, 5, 1), VisitKind::None);
    v.procedures = vec![
        qty("170000410", "2"),
        qty("170027910", "2"),
        order("170000210"),
    ];
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![
            ("170000410".into(), 128),
            ("170027910".into(), 102),
            ("170017270".into(), 51),
            ("170000210".into(), 57)
        ]
    );
    assert_eq!(r.total_points, 338);
    // Age 5 (幼児 3–6歳), 4 films: 診断 85 + 3 × 42.5 = 212.5 → 213; 撮影 68 + 3 × 34 = 170;
    // 幼児加算 170 × 30/100 = 51; 213 + 170 + 51 = 434.
    let mut v = visit(d(2024, 7, 10), d(2019, 5, 1), VisitKind::None);
    v.procedures = vec![qty("170000410", "4"), qty("170027910", "4")];
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![
            ("170000410".into(), 213),
            ("170027910".into(), 170),
            ("170034170".into(), 51)
        ]
    );
    // ordered by hand, the addition is not added twice
    let mut v = visit(d(2024, 7, 10), d(2019, 5, 1), VisitKind::None);
    v.procedures = vec![qty("170027910", "4"), order("170034170")];
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![("170027910".into(), 170), ("170034170".into(), 51)]
    );
}

#[test]
fn percent_items_apply_to_the_item_before_them() {
    // 時間外加算２（処置） 140000190 is 点数識別 5, 40.00: ordered after 創傷処置（3000–6000cm²）
    // 160 点 it is 160 × 40/100 = 64. Ordered first, it has nothing to apply to: an error.
    let mut v = visit(d(2024, 7, 10), adult(), VisitKind::None);
    v.procedures = vec![order("140000910"), order("140000190")];
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![("140000910".into(), 160), ("140000190".into(), 64)]
    );
    assert_eq!(r.lines[1].shikibetsu, 40);
    let mut v = visit(d(2024, 7, 10), adult(), VisitKind::None);
    v.procedures = vec![order("140000190")];
    let r = calc(&v);
    assert_eq!(
        message_for(&r, "percent_addition").map(|m| m.level),
        Some(Level::Error)
    );
}

// ---- 処置・手術の時間外・休日・深夜加算 (J通則5, K通則12) -------------------------------------

#[test]
fn treatment_time_additions() {
    // 時間外の再診で 創傷処置（3000–6000cm²） 160 点 (時間加算区分 1) and 創傷処置（100cm²未満）
    // 52 点 (区分 0: under 150 点, no addition):
    //   再診料 75 + 時間外加算（再診） 65 + 160 + 時間外加算２（処置） 160 × 40% = 64 + 52 = 416
    //   (外来管理加算: refused, 処置 are 外来管理加算区分 1)
    let mut v = visit(d(2024, 7, 10), adult(), VisitKind::Revisit);
    v.time_category = TimeCategory::Overtime;
    v.procedures = vec![order("140000910"), order("140000610")];
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![
            ("112007410".into(), 75),
            ("112001110".into(), 65),
            ("140000910".into(), 160),
            ("140000610".into(), 52),
            ("140000190".into(), 64)
        ]
    );
    assert_eq!(r.total_points, 416);
    // 深夜: 深夜加算２（処置） 160 × 80% = 128
    v.time_category = TimeCategory::LateNight;
    let r = calc(&v);
    assert!(
        billed(&r).contains(&("140000390".into(), 128)),
        "{:?}",
        billed(&r)
    );
    // 手術 on a holiday: 創傷処理 530 × 休日加算２（手術） 80% = 424
    let mut v = visit(d(2024, 7, 14), adult(), VisitKind::None);
    v.time_category = TimeCategory::Holiday;
    v.procedures = vec![order("150001010")];
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![("150001010".into(), 530), ("150000590".into(), 424)]
    );
    assert_eq!(r.lines[1].shikibetsu, 50);
    // with the 届出 for 時間外加算１（手術） (施設基準 3398): 80% instead of 40%: 424.
    // 処置 keep 加算２ under 1,000 点 even with their 届出 (3363).
    let mut v = visit(d(2024, 7, 10), adult(), VisitKind::None);
    v.time_category = TimeCategory::Overtime;
    v.procedures = vec![order("150001010"), order("140000910")];
    let mut f = clinic();
    f.standards = vec!["3398".into(), "3363".into()];
    let r = calculate(store(), &f, &v).unwrap();
    assert_eq!(
        billed(&r),
        vec![
            ("150001010".into(), 530),
            ("140000910".into(), 160),
            ("150371390".into(), 424),
            ("140000190".into(), 64)
        ]
    );
    // regular hours: nothing added
    v.time_category = TimeCategory::Normal;
    assert_eq!(calculate(store(), &f, &v).unwrap().total_points, 690);
}

// ---- 注射 -----------------------------------------------------------------------------------

fn injection(procedure: Option<&str>, count: u32, drugs: &[(&str, &str)]) -> Injection {
    Injection {
        procedure: procedure.map(str::to_string),
        count,
        drugs: drugs
            .iter()
            .map(|(c, q)| DrugOrder {
                code: c.to_string(),
                quantity: q.to_string(),
                by_generic_name: false,
            })
            .collect(),
    }
}

#[test]
fn injections_bill_the_procedure_and_the_drugs_per_time() {
    // adult, 2024-07-10:
    //   静脈内注射 130003510 37 (32) + 強力ネオミノファーゲンシー静注20mL 122円 → 12.2 → 12 点 (32)
    //   筋肉内注射 130000510 25 (31) + 沈降破傷風トキソイド 0.5mL 1,063円 → 106.3 → 106 (31)
    //     + 生物学的製剤注射加算 15 (医薬品 col 16 = 1, 筋注)
    //   点滴注射（その他）（入院外） 130009310 53 (33) + ソリタ－Ｔ３号 500mL 176円 → 17.6 → 18 (33)
    //   = 37 + 12 + 25 + 106 + 15 + 53 + 18 = 266 点
    let mut v = visit(d(2024, 7, 10), adult(), VisitKind::None);
    v.injections = vec![
        injection(Some("130003510"), 1, &[("620005159", "1")]),
        injection(Some("130000510"), 1, &[("646320003", "1")]),
        injection(Some("130009310"), 1, &[("622345201", "1")]),
    ];
    let r = calc(&v);
    let got: Vec<(String, i64, u8)> = r
        .lines
        .iter()
        .map(|l| (l.items[0].code.clone(), l.total, l.shikibetsu))
        .collect();
    assert_eq!(
        got,
        vec![
            ("130003510".into(), 37, 32),
            ("620005159".into(), 12, 32),
            ("130000510".into(), 25, 31),
            ("646320003".into(), 106, 31),
            ("130000110".into(), 15, 31),
            ("130009310".into(), 53, 33),
            ("622345201".into(), 18, 33)
        ]
    );
    assert_eq!(r.total_points, 266);
    assert!(r.is_ok(), "{:?}", r.messages);
}

#[test]
fn injection_infant_narcotic_and_count() {
    // Age 3: 静脈内注射 37 + 乳幼児加算（静脈内注射） 52 (cols 100-102: under 6) + drug 12 = 101.
    let mut v = visit(d(2024, 7, 10), d(2021, 5, 1), VisitKind::None);
    v.injections = vec![injection(Some("130003510"), 1, &[("620005159", "1")])];
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![
            ("130003510".into(), 37),
            ("130003670".into(), 52),
            ("620005159".into(), 12)
        ]
    );
    // モルヒネ塩酸塩注射液10mg 305円 → (305 − 15)/10 = 29 → 30 点 (麻薬, col 14 = 1), 2 回 (皮下注):
    //   手技 25 × 2 = 50, 薬剤 30 × 2 = 60, 麻薬注射加算 5 × 2 = 10 → 120 点
    let mut v = visit(d(2024, 7, 10), adult(), VisitKind::None);
    v.injections = vec![injection(Some("130000510"), 2, &[("620009277", "1")])];
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![
            ("130000510".into(), 50),
            ("620009277".into(), 60),
            ("130000310".into(), 10)
        ]
    );
    // drugs only (no 手技): 診療識別 33
    let mut v = visit(d(2024, 7, 10), adult(), VisitKind::None);
    v.injections = vec![injection(None, 1, &[("622345201", "1")])];
    let r = calc(&v);
    assert_eq!((r.lines[0].shikibetsu, r.total_points), (33, 18));
    // a 手技 that is not an injection, or an oral drug: an error / a warning
    let mut v = visit(d(2024, 7, 10), adult(), VisitKind::None);
    v.injections = vec![
        injection(Some("140000610"), 1, &[]),
        injection(None, 1, &[("610406079", "1")]),
    ];
    let r = calc(&v);
    assert_eq!(
        message_for(&r, "injection").map(|m| m.level),
        Some(Level::Error)
    );
    assert_eq!(
        message_for(&r, "drug_form").map(|m| m.level),
        Some(Level::Warning)
    );
    // bad input is an input error
    let mut v = visit(d(2024, 7, 10), adult(), VisitKind::None);
    v.injections = vec![injection(Some("130000510"), 0, &[])];
    assert!(matches!(
        calculate(store(), &clinic(), &v),
        Err(FeeError::InvalidInput { .. })
    ));
}

// ---- 高額療養費 (外来, 70歳未満 区分ア〜オ; simplified: this facility, the calendar month) -------

#[test]
fn high_cost_limits() {
    // ウ: 80,100 + (300,000 − 267,000) × 1% = 80,430; ア: 252,600 + (1,000,000 − 842,000) × 1%
    // = 254,180; the 1% part rounded to the yen: 12,345 → 123.45 → 123, 12,350 → 123.5 → 124.
    assert_eq!(high_cost_limit(HighCostCategory::U, 300_000), 80_430);
    assert_eq!(high_cost_limit(HighCostCategory::U, 200_000), 80_100);
    assert_eq!(high_cost_limit(HighCostCategory::A, 1_000_000), 254_180);
    assert_eq!(high_cost_limit(HighCostCategory::I, 570_345), 167_523);
    assert_eq!(high_cost_limit(HighCostCategory::I, 570_350), 167_524);
    assert_eq!(high_cost_limit(HighCostCategory::E, 1_000_000), 57_600);
    assert_eq!(high_cost_limit(HighCostCategory::O, 10), 35_400);
    assert_eq!(high_cost_limit(HighCostCategory::General70, 10), 18_000);
}

#[test]
fn high_cost_caps_the_months_copay() {
    // Each visit: 筋注 × 80 回 of 沈降破傷風トキソイド: 手技 25 × 80 = 2,000, 薬剤 106 × 80 = 8,480,
    // 生物学的製剤注射加算 15 × 80 = 1,200 → 11,680 点 = 116,800 円; 30% = 35,040 円.
    let one = |day: u32, cat: Option<HighCostCategory>| {
        let mut v = visit(d(2024, 7, day), adult(), VisitKind::None);
        v.id = format!("v{day}");
        v.insurance.high_cost = cat;
        v.injections = vec![injection(Some("130000510"), 80, &[("646320003", "1")])];
        v
    };
    for (cat, second) in [
        // エ: limit 57,600 → 2nd visit 57,600 − 35,040 = 22,560
        (Some(HighCostCategory::E), 22_560),
        // オ: 35,400 → 1st 35,040 (under), 2nd 360
        (Some(HighCostCategory::O), 360),
        // ウ: 80,100 + (233,600 − 267,000 → 0) = 80,100 > 70,080: no cap
        (Some(HighCostCategory::U), 35_040),
        (None, 35_040),
    ] {
        let r = calculate_month(store(), &clinic(), &[one(3, cat), one(17, cat)]).unwrap();
        assert_eq!(r[0].total_points, 11_680);
        assert_eq!(r[0].copay_yen, 35_040, "{cat:?}");
        assert_eq!(r[1].copay_yen, second, "{cat:?}");
        assert_eq!(r[1].insurance_copay_yen, second, "{cat:?}");
        assert_eq!(
            message_for(&r[1], "high_cost_cap").is_some(),
            second != 35_040,
            "{cat:?}"
        );
    }
    // a new month starts again
    let mut later = one(3, Some(HighCostCategory::O));
    later.date = d(2024, 8, 5);
    let r = calculate_month(
        store(),
        &clinic(),
        &[
            one(3, Some(HighCostCategory::O)),
            one(17, Some(HighCostCategory::O)),
            later,
        ],
    )
    .unwrap();
    assert_eq!(r[2].copay_yen, 35_040);
}

// ---- 傷病名関連区分: 特定疾患療養管理料 needs a 特定疾患 as 主病 ------------------------------------

#[test]
fn specific_disease_management_needs_the_main_disease() {
    // 再診料 75 + 特定疾患療養管理料（診療所） 113001810 225 (傷病名関連区分 5) + 外来管理加算 52 = 352,
    // with 胃潰瘍 5319009 (特定疾患等対象区分 05) as 主病.
    let diagnosis = |code: &str, main: bool| DiagnosisInput {
        code: code.into(),
        modifiers: vec![],
        name: None,
        start_date: d(2024, 5, 1),
        outcome: 1,
        main,
    };
    let mut v = visit(d(2024, 7, 10), adult(), VisitKind::Revisit);
    v.procedures = vec![order("113001810")];
    v.diagnoses = vec![diagnosis("5319009", true)];
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![
            ("112007410".into(), 75),
            ("113001810".into(), 225),
            ("112011010".into(), 52)
        ]
    );
    assert_eq!(r.lines[1].shikibetsu, 13);
    assert!(r.is_ok());
    // 胃潰瘍 only as a secondary disease, 急性上気道炎 4659007 (区分 00) as 主病: refused, an error
    v.diagnoses = vec![diagnosis("4659007", true), diagnosis("5319009", false)];
    let r = calc(&v);
    assert!(!has_code(&r, "113001810"));
    let m = message_for(&r, "disease_relation").unwrap();
    assert_eq!(m.level, Level::Error);
    assert!(m.message_ja.contains("主病"), "{}", m.message_ja);
    // no diagnosis at all: the same
    v.diagnoses.clear();
    assert!(!calc(&v).is_ok());
}

// ---- 処置の乳幼児加算: the 年齢加算 columns of the 処置 (they match col 46 for every 処置) -------

#[test]
fn treatment_infant_addition() {
    // 喀痰吸引 140003810 48 点, 年齢加算 (00–06) 6歳未満乳幼児加算（処置）（83） 140049370 (its
    // 処置乳幼児加算区分 4). Age 2: 48 + 83 = 131 (診療識別 40). Age 7: 48.
    let mut v = visit(d(2024, 7, 10), d(2022, 5, 1), VisitKind::None);
    v.procedures = vec![order("140003810")];
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![("140003810".into(), 48), ("140049370".into(), 83)]
    );
    assert!(r.lines.iter().all(|l| l.shikibetsu == 40));
    let mut v = visit(d(2024, 7, 10), d(2017, 5, 1), VisitKind::None);
    v.procedures = vec![order("140003810")];
    assert_eq!(billed(&calc(&v)), vec![("140003810".into(), 48)]);
}

// ---- 処置・手術の薬剤 (J300): 15円以下は算定しない ---------------------------------------------

#[test]
fn treatment_drugs_under_fifteen_yen_are_not_billed() {
    // 創傷処置（100cm²未満） 52 + アクアチム軟膏1% 22.10円/g × 2 g = 44.2円 → 4.42 → 4 点 (診療識別 40)
    let mut v = visit(d(2024, 7, 10), adult(), VisitKind::None);
    v.procedures = vec![order("140000610")];
    v.treatment_drugs = vec![TreatmentDrugs {
        shikibetsu: None,
        drugs: vec![DrugOrder {
            code: "620000348".into(),
            quantity: "2".into(),
            by_generic_name: false,
        }],
    }];
    let r = calc(&v);
    assert_eq!(
        billed(&r),
        vec![("140000610".into(), 52), ("620000348".into(), 4)]
    );
    assert_eq!(r.lines[1].shikibetsu, 40);
    // 0.5 g = 11.05円 ≤ 15円: not billed, said so
    v.treatment_drugs[0].drugs[0].quantity = "0.5".into();
    let r = calc(&v);
    assert_eq!(billed(&r), vec![("140000610".into(), 52)]);
    assert_eq!(
        message_for(&r, "treatment_drug").map(|m| m.level),
        Some(Level::Info)
    );
}

#[test]
fn endoscopy_time_addition() {
    // 休日に緊急の ＥＦ－胃・十二指腸 160093810 1,140 点 (時間加算区分 1): 休日加算（内視鏡検査）
    // 160203970 1,140 × 80/100 = 912 (診療識別 60). Other 検査 (col 43 = 0) take none.
    let mut v = visit(d(2024, 7, 14), adult(), VisitKind::None);
    v.time_category = TimeCategory::Holiday;
    v.procedures = vec![order("160093810"), order("160008010")];
    let r = calc(&v);
    assert!(
        billed(&r).contains(&("160203970".into(), 912)),
        "{:?}",
        billed(&r)
    );
    assert_eq!(
        r.lines.iter().filter(|l| l.rule == "time_addition").count(),
        1
    );
}
