//! Master import: dated versions, change files, ZIP, CP932, malformed rows, atomic swap.

mod common;

use common::*;
use iryo_fee::{import_masters, FeeError, MasterStore};

#[test]
fn fixture_import_reports_every_master() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fee.sqlite");
    let mut events = Vec::new();
    let report = import_masters(&fixture_dir(), &path, &mut |p| {
        events.push((p.phase, p.done_files))
    })
    .unwrap();
    for k in ['S', 'Y', 'T', 'C', 'B', 'Z'] {
        assert!(
            report.codes.get(&k).is_some_and(|c| c.0 > 0),
            "master {k} imported"
        );
    }
    assert!(report.tables.get("exclusion").is_some_and(|&n| n > 0));
    assert!(report.tables.get("limit").is_some_and(|&n| n > 0));
    // s_20240306 (R6 改定 change file) is older than the full s_ALL20240531 and is skipped.
    let skipped: Vec<_> = report
        .files
        .iter()
        .filter(|f| !f.applied)
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(skipped, vec!["s_20240306.csv".to_string()]);
    // Progress: one Reading event per file, then Writing and Done.
    assert_eq!(
        events.first().map(|e| e.0),
        Some(iryo_fee::ImportPhase::Reading)
    );
    assert_eq!(
        events.last().map(|e| e.0),
        Some(iryo_fee::ImportPhase::Done)
    );
    let store = MasterStore::open(&path).unwrap();
    let summary = store.summary().unwrap();
    assert!(summary["masters"]["S"]["codes"].as_i64().unwrap() > 50);
}

#[test]
fn price_on_answers_for_each_date() {
    let s = store();
    // 初診料: R6 291点 from 2024-06-01 (full file); the row's 旧点数 says 288点 before that.
    let p = s.price_on("111000110", d(2024, 6, 1)).unwrap().unwrap();
    assert_eq!((p.amount.as_str(), p.unit), ("291", "点"));
    assert_eq!(p.valid_from, Some(d(2024, 6, 1)));
    assert_eq!(
        s.price_on("111000110", d(2024, 5, 31))
            .unwrap()
            .unwrap()
            .amount,
        "288"
    );
    // 医療ＤＸ推進体制整備加算: 111703470 is new on 2024-10-01 as 加算１ 11点 (s_20240906),
    // renamed 加算４ and lowered to 10点 on 2025-04-01 (s_20250307).
    assert!(s.price_on("111703470", d(2024, 9, 30)).unwrap().is_none());
    let a = s.price_on("111703470", d(2024, 12, 1)).unwrap().unwrap();
    assert_eq!(
        (a.amount.as_str(), a.name.as_str()),
        ("11", "医療ＤＸ推進体制整備加算１（初診）")
    );
    assert_eq!(a.valid_to, Some(d(2025, 3, 31)));
    let b = s.price_on("111703470", d(2025, 4, 1)).unwrap().unwrap();
    assert_eq!(
        (b.amount.as_str(), b.name.as_str()),
        ("10", "医療ＤＸ推進体制整備加算４（初診）")
    );
    // 111703370 keeps 8点 but is renamed 加算３ (2024-10) then 加算６ (2025-04).
    assert_eq!(
        s.price_on("111703370", d(2024, 7, 1))
            .unwrap()
            .unwrap()
            .name,
        "医療ＤＸ推進体制整備加算（初診）"
    );
    assert_eq!(
        s.price_on("111703370", d(2024, 10, 1))
            .unwrap()
            .unwrap()
            .name,
        "医療ＤＸ推進体制整備加算３（初診）"
    );
    assert_eq!(
        s.price_on("111703370", d(2025, 4, 1))
            .unwrap()
            .unwrap()
            .name,
        "医療ＤＸ推進体制整備加算６（初診）"
    );
    // 医薬品 in yen: ガスター散２％ 16.50円 per g.
    let y = s.price_on("610406079", d(2024, 7, 1)).unwrap().unwrap();
    assert_eq!((y.amount.as_str(), y.unit), ("16.5", "円"));
    // Before 2024-04-01 (its 変更年月日) the row's 旧金額 says 24.10円.
    assert_eq!(
        s.price_on("610406079", d(2024, 3, 31))
            .unwrap()
            .unwrap()
            .amount,
        "24.1"
    );
    // 特定器材 710010172: t_ALL20240315 lists 7,641円 from 2024-06-01; t_20240531 corrects the
    // 2024-06-01 price to 9,232円 with 旧金額 7,641円, which then applies before 2024-06-01.
    assert_eq!(
        s.price_on("710010172", d(2024, 5, 1))
            .unwrap()
            .unwrap()
            .amount,
        "7641"
    );
    assert_eq!(
        s.price_on("710010172", d(2024, 6, 1))
            .unwrap()
            .unwrap()
            .amount,
        "9232"
    );
    // Unknown code.
    assert!(s.price_on("199999999", d(2024, 7, 1)).unwrap().is_none());
}

#[test]
fn comment_code_is_rebuilt_from_pattern_and_serial() {
    // c_20240329.csv carries 一連番号 "52" without leading zeros: code 8 + 30 + 000052.
    let c = store()
        .comment("830000052", d(2024, 7, 1))
        .unwrap()
        .unwrap();
    assert_eq!(c.pattern, 30);
    assert!(c.text.starts_with("６３枚を超えて"));
}

#[test]
fn disease_and_modifier_lookups() {
    let b = store().disease("5319009", d(2024, 7, 1)).unwrap().unwrap();
    assert_eq!(b.name, "胃潰瘍");
    assert_eq!(b.specific_disease, 5);
    let z = store().modifier("8282", d(2025, 7, 1)).unwrap().unwrap();
    assert_eq!(z.name, "・高分化型");
}

fn copy_fixtures(to: &std::path::Path) {
    for e in std::fs::read_dir(fixture_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn malformed_row_names_file_and_line_and_keeps_previous_store() {
    let masters = tempfile::tempdir().unwrap();
    copy_fixtures(masters.path());
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("fee.sqlite");
    import_masters(masters.path(), &path, &mut |_| {}).unwrap();
    let before = std::fs::read(&path).unwrap();

    // Append a row with a bad code (8 digits) as line 4 of a 4-line change file.
    let f = masters.path().join("s_20250307.csv");
    let mut bytes = std::fs::read(&f).unwrap();
    let lines = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    bytes.extend_from_slice(b"\"5\",\"S\",\"11100011\"");
    bytes.extend(std::iter::repeat_n(b",\"\"".as_slice(), 147).flatten());
    bytes.extend_from_slice(b"\r\n");
    std::fs::write(&f, bytes).unwrap();
    let err = import_masters(masters.path(), &path, &mut |_| {}).unwrap_err();
    match &err {
        FeeError::MalformedRow { file, line, reason } => {
            assert_eq!(file, "s_20250307.csv");
            assert_eq!(*line, lines as u64 + 1);
            assert!(reason.contains("11100011"), "{reason}");
        }
        e => panic!("unexpected error {e:?}"),
    }
    assert!(err.message_ja().contains("s_20250307.csv"));
    // Nothing partial: the old store is byte-identical and no temp file is left behind.
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);
}

#[test]
fn wrong_column_count_and_bad_encoding_are_errors() {
    let masters = tempfile::tempdir().unwrap();
    std::fs::write(
        masters.path().join("s_ALL20240101.csv"),
        b"\"0\",\"S\",\"111000110\"\r\n",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let err =
        import_masters(masters.path(), &out.path().join("x.sqlite"), &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, FeeError::MalformedRow { line: 1, .. }),
        "{err:?}"
    );

    // 0x82 0xFF is not a CP932 character.
    std::fs::write(
        masters.path().join("s_ALL20240101.csv"),
        b"\"0\",\"S\",\"\x82\xff\"\r\n",
    )
    .unwrap();
    let err =
        import_masters(masters.path(), &out.path().join("x.sqlite"), &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, FeeError::MalformedRow { line: 1, .. }),
        "{err:?}"
    );

    // An empty directory has no masters.
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        import_masters(empty.path(), &out.path().join("y.sqlite"), &mut |_| {}),
        Err(FeeError::NoMasters(_))
    ));
}

#[test]
fn full_official_masters_when_present() {
    let dir = std::path::Path::new("/work/shared/fee-masters");
    if !dir.exists() {
        eprintln!("skip: /work/shared/fee-masters not present");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("full.sqlite");
    let report = import_masters(dir, &path, &mut |_| {}).unwrap();
    assert!(report.codes[&'S'].0 > 10_000);
    assert!(report.codes[&'Y'].0 > 19_000);
    let s = MasterStore::open(&path).unwrap();
    // Values from fee-calc.md §4.1, checked against the master rows.
    let pt = |c: &str, y, m, dd| s.price_on(c, d(y, m, dd)).unwrap().map(|p| p.amount);
    assert_eq!(pt("111000110", 2024, 6, 1).as_deref(), Some("291"));
    assert_eq!(pt("112007410", 2025, 9, 1).as_deref(), Some("75"));
    assert_eq!(pt("112011310", 2025, 9, 1).as_deref(), Some("76"));
    assert_eq!(pt("111703670", 2025, 4, 1).as_deref(), Some("12"));
    assert_eq!(pt("111703270", 2024, 12, 1).as_deref(), Some("1"));
    assert_eq!(pt("120002910", 2024, 6, 1).as_deref(), Some("60"));
}
