//! `iryo fee …` over the real binary: master import (progress, summary, malformed rows), visit
//! calculation (JSON request and FHIR Bundle) and monthly UKE receipts read from the FHIR store.
//! Masters: the official-row fixture subset of crates/fee.

use iryo_fee::uke::{Payer, UkeFile};
use iryo_fee::{CalcRequest, Facility, MasterStore, VisitResult};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn iryo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iryo"))
        .args(args)
        .env_remove("IRYO_DATA")
        .env_remove("IRYO_DATABASE")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run iryo")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn fee_crate() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/fee")
}

fn masters_dir() -> String {
    fee_crate()
        .join("tests/fixtures/masters")
        .display()
        .to_string()
}

fn example(name: &str) -> PathBuf {
    fee_crate().join("examples").join(name)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Import the fixture masters into DIR/fee-masters.db (through the CLI).
fn import_into(data: &str) {
    let o = iryo(&["fee", "masters", "import", &masters_dir(), "--data", data]);
    assert!(o.status.success(), "{}", text(&o));
}

fn facility() -> Facility {
    Facility {
        code: "1312345".into(),
        name: "いりょうクリニック".into(),
        prefecture: "13".into(),
        phone: "03-0000-0000".into(),
        standards: vec!["4035".into()],
        ..Default::default()
    }
}

fn write_facility(dir: &Path) -> String {
    let p = dir.join("facility.json");
    std::fs::write(&p, serde_json::to_vec(&facility()).unwrap()).unwrap();
    p.display().to_string()
}

#[test]
fn masters_import_summary_lookup_and_malformed_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();
    let o = iryo(&["fee", "masters", "import", &masters_dir(), "--data", d]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("マスター取り込み完了"), "{t}");
    assert!(t.contains("S 医科診療行為"), "{t}");
    assert!(t.contains("Y 医薬品"), "{t}");
    assert!(t.contains("電子点数表"), "{t}");
    assert!(data.join("fee-masters.db").exists());

    // dated lookups: 初診料 was 288点 until 2024-05-31 and 291点 from the R6 revision
    let show = |date: &str| {
        let o = iryo(&[
            "fee",
            "masters",
            "show",
            "111000110",
            "--date",
            date,
            "--data",
            d,
        ]);
        assert!(o.status.success(), "{}", text(&o));
        out(&o)
    };
    assert!(
        show("2024-05-31").contains(": 288 "),
        "{}",
        show("2024-05-31")
    );
    assert!(
        show("2024-06-01").contains(": 291 "),
        "{}",
        show("2024-06-01")
    );
    let o = iryo(&["fee", "masters", "show", "999999999", "--data", d]);
    assert!(!o.status.success());
    assert!(text(&o).contains("999999999"));

    // a malformed change file: error with file and line, non-zero exit, the store is kept
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    for e in std::fs::read_dir(masters_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bad.join(e.file_name())).unwrap();
    }
    let good_row = std::fs::read(bad.join("s_20250307.csv")).unwrap();
    let first_line = good_row.split(|b| *b == b'\n').next().unwrap().to_vec();
    let mut file = first_line.clone();
    file.extend_from_slice(b"\n\"5\",\"S\",\"11100011\",\"broken\"\r\n");
    std::fs::write(bad.join("s_20250601.csv"), file).unwrap();
    let before = std::fs::read(data.join("fee-masters.db")).unwrap();
    let o = iryo(&[
        "fee",
        "masters",
        "import",
        bad.to_str().unwrap(),
        "--data",
        d,
    ]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("s_20250601.csv"), "{t}");
    assert!(t.contains("2 行目"), "{t}");
    assert!(t.contains("変更されていません"), "{t}");
    assert_eq!(std::fs::read(data.join("fee-masters.db")).unwrap(), before);
    assert!(show("2024-06-01").contains(": 291 "));

    // not a directory
    let o = iryo(&[
        "fee",
        "masters",
        "import",
        "/nonexistent/masters",
        "--data",
        d,
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("ディレクトリではありません"));
}

#[test]
fn calc_prints_lines_totals_and_copay() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap().to_string();
    import_into(&d);
    let store = MasterStore::open(&tmp.path().join("fee-masters.db")).unwrap();

    let visit = example("visit_revisit_labs.json");
    let req: CalcRequest = serde_json::from_value(read_json(&visit)).unwrap();
    let want = iryo_fee::calculate(&store, &req.facility, &req.visit).unwrap();
    assert!(want.is_ok() && want.total_points > 0);

    // text: every line with code, points and count; totals and copay
    let o = iryo(&["fee", "calc", visit.to_str().unwrap(), "--data", &d]);
    let t = out(&o);
    assert!(o.status.success(), "{}", text(&o));
    for l in &want.lines {
        let last = l.items.last().unwrap();
        assert!(t.contains(&last.code), "{} missing:\n{t}", last.code);
        assert!(
            t.contains(&format!("{} × {} = {}", l.points, l.count, l.total)),
            "{t}"
        );
    }
    assert!(
        t.contains(&format!("合計点数 (total points): {}", want.total_points)),
        "{t}"
    );
    assert!(t.contains("窓口負担 (copay):"), "{t}");

    // json: the library's result, unchanged
    let o = iryo(&[
        "fee",
        "calc",
        visit.to_str().unwrap(),
        "--data",
        &d,
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let got: VisitResult = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got, want);

    // a FHIR Bundle with a facility file: one result per Encounter, as calculate_month gives
    let fac = write_facility(tmp.path());
    let bundle = example("fhir_visit_bundle.json");
    let visits = iryo_fee::fhir::visits_from_bundle(&read_json(&bundle)).unwrap();
    let want = iryo_fee::calculate_month(&store, &facility(), &visits).unwrap();
    let o = iryo(&[
        "fee",
        "calc",
        bundle.to_str().unwrap(),
        "--facility",
        &fac,
        "--store",
        tmp.path().join("fee-masters.db").to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let got: Vec<VisitResult> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got, want);
    assert_eq!(got.len(), 2);
    let o = iryo(&["fee", "calc", bundle.to_str().unwrap(), "--data", &d]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--facility"), "{}", text(&o));
}

#[test]
fn calc_rejects_bad_input_with_japanese_and_english_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap().to_string();
    let visit = example("visit_revisit_labs.json");
    // no master store yet
    let o = iryo(&["fee", "calc", visit.to_str().unwrap(), "--data", &d]);
    assert!(!o.status.success());
    assert!(text(&o).contains("fee masters import"), "{}", text(&o));
    import_into(&d);

    let write = |name: &str, body: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let cases = [
        (
            write("broken.json", "{ not json"),
            "正しいJSONではありません",
        ),
        (
            write(
                "shape.json",
                r#"{"facility": {"kind": "clinic"}, "visit": {"bogus": 1}}"#,
            ),
            "算定リクエストの形式ではありません",
        ),
        ("/nonexistent/visit.json".to_string(), "を読めません"),
    ];
    for (path, want) in cases {
        let o = iryo(&["fee", "calc", &path, "--data", &d]);
        assert!(!o.status.success(), "{path}");
        let t = text(&o);
        assert!(t.contains(want), "{path}: {t}");
        assert!(t.contains(" / "), "ja / en: {t}");
    }
    // an unknown code: the result is shown, the error named, the exit non-zero
    let mut req = read_json(&visit);
    req["visit"]["procedures"] = json!([{ "code": "199999999" }]);
    let p = write("unknown.json", &req.to_string());
    let o = iryo(&["fee", "calc", &p, "--data", &d]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("199999999"), "{t}");
    // a bad date
    let mut req = read_json(&visit);
    req["visit"]["date"] = json!("2024-02-30");
    let p = write("date.json", &req.to_string());
    let o = iryo(&["fee", "calc", &p, "--data", &d]);
    assert!(!o.status.success());
}

/// The documented bundle's resources, plus a second July visit of p-001 and an August visit.
fn clinic_resources() -> Vec<Value> {
    let b = read_json(&example("fhir_visit_bundle.json"));
    let mut res: Vec<Value> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .collect();
    // p-003 is insured by a 国保 (6-digit 保険者番号, kind inferred from it)
    let cov = res.iter_mut().find(|r| r["id"] == "cov-003").unwrap();
    cov.as_object_mut().unwrap().remove("type");
    cov["payor"][0]["identifier"]["value"] = json!("138057");
    let enc = res.iter().find(|r| r["id"] == "v-0001").unwrap().clone();
    for (id, start) in [
        ("v-0002", "2024-07-15T09:30:00+09:00"),
        ("v-0004", "2024-08-05T09:30:00+09:00"),
    ] {
        let mut e = enc.clone();
        e["id"] = json!(id);
        e["period"] = json!({ "start": start, "end": start });
        res.push(e);
        res.push(json!({
            "resourceType": "ChargeItem", "id": format!("ci-{id}"), "status": "billable",
            "code": {"coding": [{"system": iryo_fee::fhir::SYSTEM_PROCEDURE, "code": "160008010"}]},
            "subject": {"reference": "Patient/p-001"},
            "context": {"reference": format!("Encounter/{id}")}
        }));
    }
    res
}

/// A temp data directory with the fixture masters, a FHIR store holding `resources` in
/// `tenant` (created unless `default`), a facility file and an output directory.
struct Clinic {
    _tmp: tempfile::TempDir,
    data: String,
    facility: String,
    out: PathBuf,
}

fn clinic_with(resources: Vec<Value>, tenant: &str) -> Clinic {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data").to_str().unwrap().to_string();
    import_into(&data);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = iryo_db::Store::open(&data).await.unwrap();
        let id = match tenant {
            "default" => 1,
            t => store.tenant_create(t).await.unwrap().id,
        };
        let ops = resources.into_iter().map(iryo_db::WriteOp::put).collect();
        store.write(id, ops).await.unwrap();
    });
    Clinic {
        facility: write_facility(tmp.path()),
        out: tmp.path().join("out"),
        data,
        _tmp: tmp,
    }
}

/// `iryo fee receipt` on the clinic's store, with `extra` arguments.
fn receipt(c: &Clinic, extra: &[&str]) -> Output {
    let mut a = vec![
        "fee",
        "receipt",
        "--data",
        &c.data,
        "--facility",
        &c.facility,
        "--out",
    ];
    a.push(c.out.to_str().unwrap());
    a.extend_from_slice(extra);
    iryo(&a)
}

#[test]
fn receipt_reads_the_month_from_the_store_and_writes_uke() {
    let resources = clinic_resources();
    let c = clinic_with(resources.clone(), "clinic-a");
    let (d, outdir) = (&c.data, &c.out);
    let o = receipt(&c, &["--month", "2024-07", "--tenant", "clinic-a"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("受診 3 件"), "{t}");
    assert!(t.contains("患者 2 人"), "{t}");

    // expected: the same July visits through the library (the August one is not billed)
    let store = MasterStore::open(&Path::new(&d).join("fee-masters.db")).unwrap();
    let july: Vec<Value> = resources
        .iter()
        .filter(|r| r["id"] != "v-0004" && r["id"] != "ci-v-0004")
        .cloned()
        .collect();
    let visits = iryo_fee::fhir::visits_from_resources(&july).unwrap();
    assert_eq!(visits.len(), 3);
    let claim = chrono::NaiveDate::from_ymd_opt(2024, 8, 1).unwrap();
    let want = iryo_fee::monthly_receipts(&store, &facility(), claim, &visits).unwrap();
    assert_eq!(want.files.len(), 2, "p-001 社保, p-003 国保");
    assert_eq!(want.files[0].0, Payer::Shaho);
    assert_eq!(want.files[1].0, Payer::Kokuho);
    let bytes = std::fs::read(outdir.join("shaho/RECEIPTC.UKE")).unwrap();
    assert_eq!(
        bytes, want.files[0].1,
        "the CLI writes what the library builds"
    );
    let kokuho = std::fs::read(outdir.join("kokuho/RECEIPTC.UKE")).unwrap();
    assert_eq!(kokuho, want.files[1].1);

    // parse them back: one patient each, totals add up
    let uke = UkeFile::parse(&bytes).unwrap();
    let uke_k = UkeFile::parse(&kokuho).unwrap();
    assert_eq!((uke.receipts.len(), uke_k.receipts.len()), (1, 1));
    assert_eq!(uke_k.receipts[0].re.chart_number, "p-003");
    assert_eq!(uke_k.receipts[0].ho.as_ref().unwrap().insurer, "138057");
    let total: i64 = want.results.iter().map(|r| r.total_points).sum();
    assert_eq!(uke.total_points + uke_k.total_points, total);
    assert!(t.contains(&format!("合計 {total} 点")), "{t}");
    let p1 = uke
        .receipts
        .iter()
        .find(|r| r.re.chart_number == "p-001")
        .unwrap();
    let ho = p1.ho.as_ref().unwrap();
    assert_eq!(ho.days, 2, "p-001 came on 07-01 and 07-15");
    let p1_points: i64 = want
        .results
        .iter()
        .filter(|r| r.patient_id == "p-001")
        .map(|r| r.total_points)
        .sum();
    assert_eq!(ho.points, p1_points);
    assert_eq!(
        uke.ir.claim_month.len(),
        5,
        "和暦 GYYMM: {}",
        uke.ir.claim_month
    );

    // no visits in September; unknown tenant; bad month
    let o = receipt(&c, &["--month", "2024-09", "--tenant", "clinic-a"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("外来受診がありません"), "{}", text(&o));
    let o = receipt(&c, &["--month", "2024-07", "--tenant", "nope"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("nope"));
    let o = receipt(&c, &["--month", "2024-13", "--tenant", "clinic-a"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("YYYY-MM"));
    // the default tenant has none of clinic-a's data
    let o = receipt(&c, &["--month", "2024-07"]);
    assert!(!o.status.success());
}

#[test]
fn receipt_pages_through_many_encounters() {
    // 450 patients with one 再診 each: more than two search pages of 200
    let b = read_json(&example("fhir_visit_bundle.json"));
    let find = |id: &str| {
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"].clone())
            .find(|r| r["id"] == id)
            .unwrap()
    };
    let (pat, cov, enc) = (find("p-001"), find("cov-001"), find("v-0001"));
    let mut list = Vec::new();
    for n in 0..450 {
        let (p, c, e) = (format!("pp-{n}"), format!("cc-{n}"), format!("ee-{n}"));
        let mut x = pat.clone();
        x["id"] = json!(p);
        list.push(x);
        let mut x = cov.clone();
        x["id"] = json!(c);
        x["beneficiary"]["reference"] = json!(format!("Patient/{p}"));
        list.push(x);
        let mut x = enc.clone();
        x["id"] = json!(e);
        x["subject"]["reference"] = json!(format!("Patient/{p}"));
        x.as_object_mut().unwrap().remove("diagnosis");
        // weekdays of July 2024 that are not 休日 (7/15 is 海の日; Sundays would add 休日加算)
        const DAYS: [u32; 22] = [
            1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 16, 17, 18, 19, 22, 23, 24, 25, 26, 29, 30, 31,
        ];
        let day = DAYS[n % DAYS.len()];
        x["period"] = json!({"start": format!("2024-07-{day:02}T10:00:00+09:00")});
        list.push(x);
    }
    let c = clinic_with(list, "default");
    let o = receipt(&c, &["--month", "2024-07"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("受診 450 件"), "{t}");
    let uke = UkeFile::parse(&std::fs::read(c.out.join("shaho/RECEIPTC.UKE")).unwrap()).unwrap();
    assert_eq!(uke.receipts.len(), 450);
    // each is a 再診料 75 + 外来管理加算 52 = 127点 (R6 values of the fixture masters)
    assert_eq!(uke.total_points, 450 * 127);
}

#[test]
fn facility_is_a_tenant_setting_used_by_receipt() {
    let c = clinic_with(clinic_resources(), "clinic-a");
    let run = |extra: &[&str]| {
        let mut a = vec!["fee", "facility", "--data", &c.data];
        a.extend_from_slice(extra);
        iryo(&a)
    };
    // nothing set yet: receipt without --facility says how to set it
    let o = iryo(&[
        "fee",
        "receipt",
        "--data",
        &c.data,
        "--tenant",
        "clinic-a",
        "--month",
        "2024-07",
        "--out",
        c.out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("iryo fee facility --tenant clinic-a"),
        "{}",
        text(&o)
    );
    let o = run(&["--tenant", "clinic-a"]);
    assert!(!o.status.success(), "{}", text(&o));
    // a malformed facility file is refused, nothing stored
    let bad = c.out.parent().unwrap().join("bad.json");
    std::fs::write(&bad, r#"{"kind": "castle"}"#).unwrap();
    let o = run(&["--tenant", "clinic-a", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("施設情報"), "{}", text(&o));
    // set, show, and the receipt uses it: the same UKE as with --facility
    let o = run(&["--tenant", "clinic-a", &c.facility]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out(&o).contains("施設情報を設定しました"), "{}", out(&o));
    let o = run(&["--tenant", "clinic-a"]);
    assert!(o.status.success(), "{}", text(&o));
    let shown: Facility = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(
        serde_json::to_value(&shown).unwrap(),
        serde_json::to_value(facility()).unwrap()
    );
    let o = receipt(&c, &["--month", "2024-07", "--tenant", "clinic-a"]);
    assert!(o.status.success(), "{}", text(&o));
    let with_file = std::fs::read(c.out.join("shaho/RECEIPTC.UKE")).unwrap();
    std::fs::remove_dir_all(&c.out).unwrap();
    let o = iryo(&[
        "fee",
        "receipt",
        "--data",
        &c.data,
        "--tenant",
        "clinic-a",
        "--month",
        "2024-07",
        "--out",
        c.out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(c.out.join("shaho/RECEIPTC.UKE")).unwrap(),
        with_file
    );
    // the other tenant has none
    let o = run(&["--tenant", "default"]);
    assert!(!o.status.success());
}
