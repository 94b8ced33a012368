//! UKE receipts: golden file, round trip through our parser, and parser errors.

mod common;

use common::*;
use iryo_fee::calc::*;
use iryo_fee::uke::{build_uke, Payer, UkeFile};
use iryo_fee::{calculate_month, monthly_receipts};

/// A small month: patient p1 (社保, 2 revisits with labs and an in-house 剤), patient p2 (社保,
/// family member, initial visit with a material), patient p3 (国保 infant, goes to the other payer).
fn month() -> Vec<VisitInput> {
    let mut a = visit(d(2024, 7, 1), d(1960, 4, 10), VisitKind::Revisit);
    a.id = "v1".into();
    a.procedures = vec![
        order("160017410"),
        order("160018910"),
        order("160019010"),
        order("160019410"),
        order("160022510"),
    ];
    a.prescription = Some(Prescription {
        mode: DispensingMode::InHouse,
        refill: false,
        psychotropic_multi: false,
        rps: vec![Rp {
            kind: RpKind::Internal,
            days: 14,
            drugs: vec![
                DrugOrder {
                    code: "610406079".into(),
                    quantity: "3".into(),
                    by_generic_name: false,
                },
                DrugOrder {
                    code: "610406389".into(),
                    quantity: "1.5".into(),
                    by_generic_name: false,
                },
            ],
        }],
    });
    a.comments = vec![CommentInput {
        code: "820100001".into(),
        text: String::new(),
        shikibetsu: Some(12),
    }];
    a.diagnoses = vec![DiagnosisInput {
        code: "5319009".into(),
        modifiers: vec![],
        name: None,
        start_date: d(2024, 6, 3),
        outcome: 1,
        main: true,
    }];
    let mut b = a.clone();
    b.comments.clear();
    b.id = "v2".into();
    b.date = d(2024, 7, 15);
    b.procedures = vec![order("160022510")];
    let mut c = visit(d(2024, 7, 3), d(1990, 12, 24), VisitKind::Initial);
    c.id = "v3".into();
    c.patient.id = "p2".into();
    c.patient.name = "山田　花子".into();
    c.patient.kana = "ﾔﾏﾀﾞ ﾊﾅｺ".into();
    c.patient.sex = Sex::Female;
    c.insurance.is_insured_person = false;
    c.procedures = vec![order("140002210")];
    c.materials = vec![MaterialOrder {
        code: "710010172".into(),
        quantity: "0.5".into(),
        shikibetsu: None,
    }];
    c.diagnoses = vec![DiagnosisInput {
        code: "0000999".into(),
        modifiers: vec!["8282".into()],
        name: Some("腰部打撲".into()),
        start_date: d(2024, 7, 3),
        outcome: 2,
        main: true,
    }];
    let mut k = visit(d(2024, 7, 6), d(2022, 2, 14), VisitKind::Initial);
    k.id = "v4".into();
    k.patient.id = "p3".into();
    k.insurance.kind = InsuranceKind::Kokuho;
    vec![b, a, c, k]
}

fn shaho_file() -> (UkeFile, Vec<u8>) {
    let visits = month();
    let results = calculate_month(store(), &clinic(), &visits).unwrap();
    let pairs: Vec<_> = visits.iter().zip(results.iter()).collect();
    let f = build_uke(&clinic(), Payer::Shaho, d(2024, 8, 1), &pairs).unwrap();
    let bytes = f.to_bytes().unwrap();
    (f, bytes)
}

/// The golden file was checked by hand:
/// p1 visit 1 (07-01): 再診料 75 + 外来管理加算 52 + 剤 (ガスター 16.50×3 = 49.50 + プロマック
///   33.60×1.5 = 50.40 → 99.90円 → ceil(8.49)+1 = 10点 × 14日 = 140) + 調剤料 11 + 処方料 42 +
///   生化学 5項目 包括 93 + 判断料 144 = 557点; copay 1,671円 → 1,670円.
/// p1 visit 2 (07-15): 75 + 52 + 140 + 11 + 42 + AST 17 (判断料 already billed) = 337点; 1,010円.
/// HO 894点, 2 days, 2,680円. p2 (家族 1116): 初診料 291 + 湿布 35 + 材料 462 = 788点, 2,360円.
/// GO: 2 receipts, 1,682点. p3 (国保) is not in this 社保 file.
#[test]
fn golden_file() {
    let (_, bytes) = shaho_file();
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden_shaho_202407.uke");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &bytes).unwrap();
    }
    let expected = std::fs::read(&golden).expect("golden file (UPDATE_GOLDEN=1 to create)");
    let text = encoding_rs::SHIFT_JIS.decode(&bytes).0.into_owned();
    assert_eq!(bytes, expected, "UKE output changed:\n{text}");
}

#[test]
fn records_follow_the_layout() {
    let (f, bytes) = shaho_file();
    let text = encoding_rs::SHIFT_JIS.decode(&bytes).0.into_owned();
    let lines: Vec<&str> = text
        .trim_end_matches('\u{1a}')
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .collect();
    // IR: 社保, 東京 13, 医科 1, 医療機関コード, 名称, 請求年月 令和6年8月 = 50608.
    assert_eq!(
        lines[0],
        "IR,1,13,1,1312345,,いりょうクリニック,50608,00,03-0000-0000"
    );
    // Two 社保 receipts (p3 is 国保): p1 本人 1112, p2 家族 1116.
    assert_eq!(f.receipts.len(), 2);
    assert_eq!(f.receipts[0].re.kind, "1112");
    assert_eq!(f.receipts[1].re.kind, "1116");
    assert!(
        lines[1].starts_with("RE,1,1112,50607,山田　太郎,1,3350410,"),
        "{}",
        lines[1]
    );
    let count = |tag: &str, n: usize| {
        lines
            .iter()
            .filter(|l| l.starts_with(tag))
            .all(|l| l.split(',').count() == n)
    };
    assert!(
        count("RE,", 38)
            && count("HO,", 15)
            && count("SY,", 8)
            && count("SI,", 44)
            && count("IY,", 44)
            && count("TO,", 48)
    );
    assert!(lines.last().unwrap().starts_with("GO,2,"));
    // p1: 再診料 on days 1 and 15 → one SI line, 回数 2, 算定日 day1 = 1, day15 = 1.
    let saishin = lines.iter().find(|l| l.contains(",112007410,")).unwrap();
    let f: Vec<&str> = saishin.split(',').collect();
    assert_eq!(
        (f[1], f[5], f[6], f[13], f[27]),
        ("12", "75", "2", "1", "1")
    );
    // The 5-item bundle: 5 SI lines, 点数 93 only on the last, 診療識別 60 only on the first.
    let lab: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| {
            l.starts_with("SI,")
                && (l.contains(",16001") || l.contains(",16002") || l.contains(",16001"))
        })
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(lab.len(), 5 + 1, "5 items on day 1 and AST alone on day 15");
    assert_eq!((lab[0][1], lab[0][5]), ("60", ""));
    assert_eq!(lab[4][5], "93");
    // 剤: two IY lines, 点数 on the last, 回数 = 14 + 14 days.
    let iy: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| l.starts_with("IY,"))
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(iy.len(), 2);
    assert_eq!(
        (iy[0][1], iy[0][4], iy[0][5], iy[1][5], iy[1][6]),
        ("21", "3", "", "10", "28")
    );
    // HO 合計点数 = the sum of the two visits; GO total = sum of the receipts.
    let (_, parsed) = (0, UkeFile::parse(&bytes).unwrap());
    let p1 = parsed.receipts[0].ho.as_ref().unwrap();
    assert_eq!(p1.days, 2);
    let sum: i64 = parsed
        .receipts
        .iter()
        .map(|r| r.ho.as_ref().unwrap().points)
        .sum();
    assert_eq!(parsed.total_points, sum);
}

#[test]
fn parser_round_trips_our_output() {
    let (f, bytes) = shaho_file();
    let parsed = UkeFile::parse(&bytes).unwrap();
    assert_eq!(parsed, f);
    assert_eq!(parsed.to_bytes().unwrap(), bytes);
}

#[test]
fn parser_rejects_broken_files() {
    let (_, bytes) = shaho_file();
    let text = encoding_rs::SHIFT_JIS.decode(&bytes).0.into_owned();
    let enc = |s: &str| encoding_rs::SHIFT_JIS.encode(s).0.into_owned();
    // GO total that does not match the HO records.
    let go = text
        .lines()
        .find(|l| l.starts_with("GO,"))
        .unwrap()
        .to_string();
    let bad = text.replace(&go, "GO,2,1,99");
    assert!(UkeFile::parse(&enc(&bad)).is_err());
    // A record with a wrong field count names its line.
    let bad = text.replacen("HO,", "HO,X,", 1);
    match UkeFile::parse(&enc(&bad)) {
        Err(iryo_fee::FeeError::Uke { line, .. }) => assert_eq!(line, 3),
        other => panic!("{other:?}"),
    }
    // Garbage, empty input, missing IR.
    assert!(UkeFile::parse(b"\x82\xff\x00").is_err());
    assert!(UkeFile::parse(b"").is_err());
    assert!(UkeFile::parse(b"RE,1\r\n").is_err());
}

#[test]
fn monthly_receipts_split_by_payer() {
    let m = monthly_receipts(store(), &clinic(), d(2024, 8, 1), &month()).unwrap();
    assert_eq!(m.results.len(), 4);
    let payers: Vec<Payer> = m.files.iter().map(|f| f.0).collect();
    assert_eq!(payers, vec![Payer::Shaho, Payer::Kokuho]);
    let kokuho = UkeFile::parse(&m.files[1].1).unwrap();
    assert_eq!(kokuho.ir.payer, Payer::Kokuho);
    // 国保 infant: 未就学者 4, 給付割合 80.
    assert_eq!(
        (
            kokuho.receipts[0].re.kind.as_str(),
            kokuho.receipts[0].re.benefit_ratio.as_str()
        ),
        ("1114", "80")
    );
    // Visits of two months are rejected.
    let mut v = month();
    v[0].date = d(2024, 8, 1);
    assert!(monthly_receipts(store(), &clinic(), d(2024, 8, 1), &v).is_err());
}

#[test]
fn public_expense_receipt_has_a_ko_record() {
    // 再診 127点 twice in July with a 公費 (10%): RE 種別 1122 (医保＋1公費, 本人外来), KO with
    // 実日数 2, 254点, 負担金額 130 + 130 = 260円; detail lines have 負担区分 2.
    let mut a = visit(d(2024, 7, 1), d(1970, 5, 5), VisitKind::Revisit);
    a.insurance.public_expenses = vec![PublicExpense {
        payer_number: "54136015".into(),
        recipient_number: "1234567".into(),
        burden_percent: 10,
        cap_yen: None,
        monthly_cap_yen: None,
    }];
    let mut b = a.clone();
    b.date = d(2024, 7, 8);
    let visits = vec![a, b];
    let results = calculate_month(store(), &clinic(), &visits).unwrap();
    let pairs: Vec<_> = visits.iter().zip(results.iter()).collect();
    let f = build_uke(&clinic(), Payer::Shaho, d(2024, 8, 1), &pairs).unwrap();
    let bytes = f.to_bytes().unwrap();
    let text = encoding_rs::SHIFT_JIS.decode(&bytes).0.into_owned();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert!(lines[1].starts_with("RE,1,1122,"), "{}", lines[1]);
    // HO 負担金額 is the insurance copay: 380 × 2 = 760円.
    assert!(
        lines[2].starts_with("HO,06130012,12,345,2,254,") && lines[2].contains(",760,"),
        "{}",
        lines[2]
    );
    assert_eq!(lines[3], "KO,54136015,1234567,,2,254,260,,,,,");
    assert!(lines[4].starts_with("SI,12,2,112007410,"), "{}", lines[4]);
    let parsed = UkeFile::parse(&bytes).unwrap();
    assert_eq!(parsed, f);
    assert_eq!(parsed.receipts[0].ko[0].copay, Some(260));
}

#[test]
fn high_cost_category_is_a_special_note_and_the_capped_copay() {
    // 区分オ on a 30% visit of 再診 127 点 + 筋注 × 80 of 沈降破傷風トキソイド 11,680 点 = 11,807 点:
    // 35,421円 → 35,420円 is over the 35,400円 limit, so HO 負担金額 = 35,400 and RE 特記事項 30.
    let mut a = visit(d(2024, 7, 1), d(1970, 5, 5), VisitKind::Revisit);
    a.insurance.high_cost = Some(HighCostCategory::O);
    a.injections = vec![Injection {
        procedure: Some("130000510".into()),
        count: 80,
        drugs: vec![DrugOrder {
            code: "646320003".into(),
            quantity: "1".into(),
            by_generic_name: false,
        }],
    }];
    let visits = vec![a];
    let results = calculate_month(store(), &clinic(), &visits).unwrap();
    assert_eq!(results[0].total_points, 11_807);
    assert_eq!(results[0].copay_yen, 35_400);
    let pairs: Vec<_> = visits.iter().zip(results.iter()).collect();
    let f = build_uke(&clinic(), Payer::Shaho, d(2024, 8, 1), &pairs).unwrap();
    let bytes = f.to_bytes().unwrap();
    let text = encoding_rs::SHIFT_JIS.decode(&bytes).0.into_owned();
    let lines: Vec<&str> = text.split("\r\n").collect();
    let re: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(re[11], "30", "{}", lines[1]);
    assert!(lines[2].contains(",35400,"), "{}", lines[2]);
    // the injection lines: 31 筋注 SI, its drug IY and the 生物学的製剤注射加算 SI, 80 回 (診療識別
    // on the first line of the group only)
    let at = lines
        .iter()
        .position(|l| l.starts_with("SI,31,1,130000510,,25,80,"))
        .expect(&text);
    assert!(
        lines[at + 1].starts_with("IY,,1,646320003,1,106,80,"),
        "{text}"
    );
    assert!(
        lines[at + 2].starts_with("SI,,1,130000110,,15,80,"),
        "{text}"
    );
    assert_eq!(UkeFile::parse(&bytes).unwrap(), f);
}
