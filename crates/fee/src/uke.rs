//! UKE (レセプト電算処理システム) monthly receipt files for 医科: the record layout, a writer that
//! encodes CP932 with CRLF, a builder from calculated visits, and a parser of our own output.
//!
//! Records written: IR (file head), per receipt RE, HO, SY…, SI/IY/TO/CO…, then GO (file tail).
//! KO (公費) is parsed but not produced: 公費 input is not modelled yet.

use crate::calc::Facility;
use crate::calc::{HighCostCategory, InsuranceKind, ItemKind, Sex, VisitInput, VisitResult};
use crate::error::{FeeError, Result};
use crate::master::AgeBound;
use crate::num::{parse_wareki, parse_wareki_month, wareki, wareki_month};
use chrono::{Datelike, NaiveDate};
use std::collections::BTreeMap;

/// 審査支払機関: 1 社会保険診療報酬支払基金, 2 国民健康保険団体連合会.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Payer {
    Shaho = 1,
    Kokuho = 2,
}

/// IR: 医療機関情報レコード.
#[derive(Debug, Clone, PartialEq)]
pub struct IrRecord {
    pub payer: Payer,
    pub prefecture: String,
    pub facility_code: String,
    pub facility_name: String,
    /// 請求年月 `GYYMM`.
    pub claim_month: String,
    pub phone: String,
}

/// RE: レセプト共通レコード.
#[derive(Debug, Clone, PartialEq)]
pub struct ReRecord {
    pub number: u32,
    /// レセプト種別 (e.g. `1112` 医科・医保単独・本人外来).
    pub kind: String,
    /// 診療年月 `GYYMM`.
    pub month: String,
    pub name: String,
    /// 1 male, 2 female.
    pub sex: u8,
    /// 生年月日 `GYYMMDD`.
    pub birth: String,
    /// 給付割合 (国保: e.g. `70`; empty for 社保).
    pub benefit_ratio: String,
    /// レセプト特記事項 (field 12): `26`–`30` 区ア〜オ for a 高額療養費 所得区分.
    pub special_note: String,
    pub chart_number: String,
    pub kana: String,
}

/// HO: 医療保険レコード.
#[derive(Debug, Clone, PartialEq)]
pub struct HoRecord {
    pub insurer: String,
    pub symbol: String,
    pub number: String,
    pub days: u32,
    pub points: i64,
    /// 負担金額 (医療保険), yen.
    pub copay: Option<i64>,
}

/// KO: 公費レコード.
#[derive(Debug, Clone, PartialEq)]
pub struct KoRecord {
    /// 公費負担者番号.
    pub payer_number: String,
    /// 受給者番号.
    pub recipient_number: String,
    pub days: u32,
    pub points: i64,
    /// 負担金額 (公費): what the patient paid under this 公費, yen.
    pub copay: Option<i64>,
}

/// SY: 傷病名レコード.
#[derive(Debug, Clone, PartialEq)]
pub struct SyRecord {
    pub code: String,
    /// 診療開始日 `GYYMMDD`.
    pub start: String,
    /// 転帰区分 1 継続, 2 治ゆ, 3 死亡, 4 中止.
    pub outcome: u8,
    /// 修飾語コード, concatenated 4-digit codes.
    pub modifiers: String,
    /// 傷病名称 (only for 未コード化傷病名 0000999).
    pub name: String,
    pub main: bool,
}

/// SI / IY: 診療行為 or 医薬品 line.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRecord {
    /// 診療識別 (only on the first line of a 診療識別 group).
    pub shikibetsu: Option<u8>,
    /// 負担区分 (`1` 医保単独).
    pub burden: String,
    pub code: String,
    /// 数量データ (SI) or 使用量 (IY).
    pub quantity: String,
    /// 点数 (only on the last line of a 剤 / bundle).
    pub points: Option<i64>,
    pub count: u32,
    /// 算定日: count per day of the month (index 0 = day 1).
    pub days: [u32; 31],
}

/// TO: 特定器材 line.
#[derive(Debug, Clone, PartialEq)]
pub struct ToRecord {
    pub claim: ClaimRecord,
    pub unit_code: String,
    /// 単価 (yen, decimal text).
    pub unit_price: String,
    pub product_name: String,
}

/// CO: コメント line.
#[derive(Debug, Clone, PartialEq)]
pub struct CoRecord {
    pub shikibetsu: Option<u8>,
    pub burden: String,
    pub code: String,
    pub text: String,
}

/// One detail line of a receipt.
#[derive(Debug, Clone, PartialEq)]
pub enum DetailRecord {
    Si(ClaimRecord),
    Iy(ClaimRecord),
    To(ToRecord),
    Co(CoRecord),
}

/// One patient's monthly receipt.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub re: ReRecord,
    pub ho: Option<HoRecord>,
    pub ko: Vec<KoRecord>,
    pub sy: Vec<SyRecord>,
    pub details: Vec<DetailRecord>,
}

/// A UKE file: head, receipts, tail.
#[derive(Debug, Clone, PartialEq)]
pub struct UkeFile {
    pub ir: IrRecord,
    pub receipts: Vec<Receipt>,
    /// GO 総件数 and 総合計点数 (computed on write, checked on parse).
    pub total_points: i64,
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(|x| x.to_string()).unwrap_or_default()
}

/// Text fields may not hold the CSV separator: ASCII commas become full-width.
fn text(s: &str) -> String {
    s.replace(',', "，").replace(['\r', '\n'], " ")
}

fn claim_fields(tag: &str, c: &ClaimRecord, out: &mut Vec<String>) {
    out.push(tag.into());
    out.push(opt(&c.shikibetsu.map(|s| format!("{s:02}"))));
    out.push(c.burden.clone());
    out.push(c.code.clone());
    out.push(c.quantity.clone());
    out.push(opt(&c.points));
    out.push(c.count.to_string());
    out.extend(std::iter::repeat_n(String::new(), 6));
    out.extend(
        c.days
            .iter()
            .map(|&d| if d == 0 { String::new() } else { d.to_string() }),
    );
}

impl UkeFile {
    /// Records as field lists, in file order.
    pub fn records(&self) -> Vec<Vec<String>> {
        let mut recs = Vec::new();
        let ir = &self.ir;
        recs.push(vec![
            "IR".into(),
            (ir.payer as u8).to_string(),
            ir.prefecture.clone(),
            "1".into(),
            ir.facility_code.clone(),
            String::new(),
            text(&ir.facility_name),
            ir.claim_month.clone(),
            "00".into(),
            ir.phone.clone(),
        ]);
        for r in &self.receipts {
            let re = &r.re;
            let mut f = vec![
                "RE".into(),
                re.number.to_string(),
                re.kind.clone(),
                re.month.clone(),
                text(&re.name),
                re.sex.to_string(),
                re.birth.clone(),
                re.benefit_ratio.clone(),
            ];
            f.extend(std::iter::repeat_n(String::new(), 3)); // 9-11
            f.push(re.special_note.clone()); // 12
            f.push(String::new()); // 13
            f.push(text(&re.chart_number)); // 14
            f.extend(std::iter::repeat_n(String::new(), 22)); // 15-36
            f.push(text(&re.kana)); // 37
            f.push(String::new()); // 38
            recs.push(f);
            if let Some(ho) = &r.ho {
                let mut f = vec![
                    "HO".into(),
                    ho.insurer.clone(),
                    text(&ho.symbol),
                    text(&ho.number),
                    ho.days.to_string(),
                    ho.points.to_string(),
                ];
                f.extend(std::iter::repeat_n(String::new(), 5)); // 7-11
                f.push(opt(&ho.copay)); // 12
                f.extend(std::iter::repeat_n(String::new(), 3)); // 13-15
                recs.push(f);
            }
            for ko in &r.ko {
                let mut f = vec![
                    "KO".into(),
                    ko.payer_number.clone(),
                    ko.recipient_number.clone(),
                    String::new(),
                    ko.days.to_string(),
                    ko.points.to_string(),
                    opt(&ko.copay),
                ];
                f.extend(std::iter::repeat_n(String::new(), 5)); // 8-12
                recs.push(f);
            }
            for sy in &r.sy {
                recs.push(vec![
                    "SY".into(),
                    sy.code.clone(),
                    sy.start.clone(),
                    sy.outcome.to_string(),
                    sy.modifiers.clone(),
                    text(&sy.name),
                    if sy.main { "01".into() } else { String::new() },
                    String::new(),
                ]);
            }
            for d in &r.details {
                let mut f = Vec::with_capacity(48);
                match d {
                    DetailRecord::Si(c) => claim_fields("SI", c, &mut f),
                    DetailRecord::Iy(c) => claim_fields("IY", c, &mut f),
                    DetailRecord::To(t) => {
                        let c = &t.claim;
                        f.push("TO".into());
                        f.push(opt(&c.shikibetsu.map(|s| format!("{s:02}"))));
                        f.push(c.burden.clone());
                        f.push(c.code.clone());
                        f.push(c.quantity.clone());
                        f.push(opt(&c.points));
                        f.push(c.count.to_string());
                        f.push(t.unit_code.clone());
                        f.push(t.unit_price.clone());
                        f.push(String::new());
                        f.push(text(&t.product_name));
                        f.extend(std::iter::repeat_n(String::new(), 6));
                        f.extend(c.days.iter().map(|&d| {
                            if d == 0 {
                                String::new()
                            } else {
                                d.to_string()
                            }
                        }));
                    }
                    DetailRecord::Co(c) => {
                        f.push("CO".into());
                        f.push(opt(&c.shikibetsu.map(|s| format!("{s:02}"))));
                        f.push(c.burden.clone());
                        f.push(c.code.clone());
                        f.push(text(&c.text));
                    }
                }
                recs.push(f);
            }
        }
        recs.push(vec![
            "GO".into(),
            self.receipts.len().to_string(),
            self.total_points.to_string(),
            "99".into(),
        ]);
        recs
    }

    /// The file bytes: CP932, comma-separated, CRLF after every record, EOF mark 0x1A at the end.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut s = String::new();
        for r in self.records() {
            s.push_str(&r.join(","));
            s.push_str("\r\n");
        }
        let (bytes, _, had_errors) = encoding_rs::SHIFT_JIS.encode(&s);
        if had_errors {
            let bad = s
                .chars()
                .find(|c| encoding_rs::SHIFT_JIS.encode(&c.to_string()).2)
                .unwrap_or('?');
            return Err(FeeError::Uke {
                line: 0,
                reason: format!("character {bad:?} cannot be written in CP932"),
            });
        }
        let mut v = bytes.into_owned();
        v.push(0x1A);
        Ok(v)
    }

    /// Parse a UKE file written by [`UkeFile::to_bytes`].
    pub fn parse(bytes: &[u8]) -> Result<UkeFile> {
        let body = bytes.strip_suffix(&[0x1A]).unwrap_or(bytes);
        let (s, _, had_errors) = encoding_rs::SHIFT_JIS.decode(body);
        if had_errors {
            return Err(FeeError::Uke {
                line: 0,
                reason: "not CP932 text".into(),
            });
        }
        let mut ir = None;
        let mut receipts: Vec<Receipt> = Vec::new();
        let mut go: Option<(usize, i64)> = None;
        for (n, raw) in s.split("\r\n").enumerate() {
            let line = n + 1;
            if raw.is_empty() {
                continue;
            }
            let err = |reason: String| FeeError::Uke { line, reason };
            if go.is_some() {
                return Err(err("record after GO".into()));
            }
            let f: Vec<&str> = raw.split(',').collect();
            let need = |n: usize| -> Result<()> {
                if f.len() == n {
                    Ok(())
                } else {
                    Err(FeeError::Uke {
                        line,
                        reason: format!("{} record has {} fields, expected {n}", f[0], f.len()),
                    })
                }
            };
            let int = |i: usize| -> Result<i64> {
                f[i].parse().map_err(|_| FeeError::Uke {
                    line,
                    reason: format!("field {} {:?} is not a number", i + 1, f[i]),
                })
            };
            let opt_int = |i: usize| -> Result<Option<i64>> {
                if f[i].is_empty() {
                    Ok(None)
                } else {
                    int(i).map(Some)
                }
            };
            let current = |receipts: &mut Vec<Receipt>| -> Result<usize> {
                if receipts.is_empty() {
                    Err(FeeError::Uke {
                        line,
                        reason: format!("{} record before any RE", f[0]),
                    })
                } else {
                    Ok(receipts.len() - 1)
                }
            };
            let claim = |start_days: usize| -> Result<ClaimRecord> {
                let mut days = [0u32; 31];
                for (d, slot) in days.iter_mut().enumerate() {
                    let t = f[start_days + d];
                    if !t.is_empty() {
                        *slot = t.parse().map_err(|_| FeeError::Uke {
                            line,
                            reason: format!("day {} count {t:?}", d + 1),
                        })?;
                    }
                }
                Ok(ClaimRecord {
                    shikibetsu: opt_int(1)?.map(|v| v as u8),
                    burden: f[2].to_string(),
                    code: f[3].to_string(),
                    quantity: f[4].to_string(),
                    points: opt_int(5)?,
                    count: int(6)? as u32,
                    days,
                })
            };
            match f[0] {
                "IR" => {
                    need(10)?;
                    if ir.is_some() {
                        return Err(err("second IR".into()));
                    }
                    let payer = match f[1] {
                        "1" => Payer::Shaho,
                        "2" => Payer::Kokuho,
                        p => return Err(err(format!("審査支払機関 {p:?}"))),
                    };
                    if parse_wareki_month(f[7]).is_none() {
                        return Err(err(format!("請求年月 {:?}", f[7])));
                    }
                    ir = Some(IrRecord {
                        payer,
                        prefecture: f[2].into(),
                        facility_code: f[4].into(),
                        facility_name: f[6].into(),
                        claim_month: f[7].into(),
                        phone: f[9].into(),
                    });
                }
                _ if ir.is_none() => return Err(err("file does not start with IR".into())),
                "RE" => {
                    need(38)?;
                    if parse_wareki(f[6]).is_none() {
                        return Err(err(format!("生年月日 {:?}", f[6])));
                    }
                    receipts.push(Receipt {
                        re: ReRecord {
                            number: int(1)? as u32,
                            kind: f[2].into(),
                            month: f[3].into(),
                            name: f[4].into(),
                            sex: int(5)? as u8,
                            birth: f[6].into(),
                            benefit_ratio: f[7].into(),
                            special_note: f[11].into(),
                            chart_number: f[13].into(),
                            kana: f[36].into(),
                        },
                        ho: None,
                        ko: Vec::new(),
                        sy: Vec::new(),
                        details: Vec::new(),
                    });
                }
                "HO" => {
                    need(15)?;
                    let i = current(&mut receipts)?;
                    receipts[i].ho = Some(HoRecord {
                        insurer: f[1].into(),
                        symbol: f[2].into(),
                        number: f[3].into(),
                        days: int(4)? as u32,
                        points: int(5)?,
                        copay: opt_int(11)?,
                    });
                }
                "KO" => {
                    need(12)?;
                    let i = current(&mut receipts)?;
                    receipts[i].ko.push(KoRecord {
                        payer_number: f[1].into(),
                        recipient_number: f[2].into(),
                        days: int(4)? as u32,
                        points: int(5)?,
                        copay: opt_int(6)?,
                    });
                }
                "SY" => {
                    need(8)?;
                    let i = current(&mut receipts)?;
                    receipts[i].sy.push(SyRecord {
                        code: f[1].into(),
                        start: f[2].into(),
                        outcome: int(3)? as u8,
                        modifiers: f[4].into(),
                        name: f[5].into(),
                        main: f[6] == "01",
                    });
                }
                "SI" | "IY" => {
                    need(44)?;
                    let i = current(&mut receipts)?;
                    let c = claim(13)?;
                    receipts[i].details.push(if f[0] == "SI" {
                        DetailRecord::Si(c)
                    } else {
                        DetailRecord::Iy(c)
                    });
                }
                "TO" => {
                    need(48)?;
                    let i = current(&mut receipts)?;
                    let c = claim(17)?;
                    receipts[i].details.push(DetailRecord::To(ToRecord {
                        claim: c,
                        unit_code: f[7].into(),
                        unit_price: f[8].into(),
                        product_name: f[10].into(),
                    }));
                }
                "CO" => {
                    need(5)?;
                    let i = current(&mut receipts)?;
                    receipts[i].details.push(DetailRecord::Co(CoRecord {
                        shikibetsu: opt_int(1)?.map(|v| v as u8),
                        burden: f[2].into(),
                        code: f[3].into(),
                        text: f[4].into(),
                    }));
                }
                "GO" => {
                    need(4)?;
                    go = Some((int(1)? as usize, int(2)?));
                }
                other => return Err(err(format!("unknown record {other:?}"))),
            }
        }
        let ir = ir.ok_or(FeeError::Uke {
            line: 1,
            reason: "no IR record".into(),
        })?;
        let (count, total) = go.ok_or(FeeError::Uke {
            line: 0,
            reason: "no GO record".into(),
        })?;
        if count != receipts.len() {
            return Err(FeeError::Uke {
                line: 0,
                reason: format!("GO says {count} receipts, file has {}", receipts.len()),
            });
        }
        let sum: i64 = receipts
            .iter()
            .filter_map(|r| r.ho.as_ref().map(|h| h.points))
            .sum();
        if sum != total {
            return Err(FeeError::Uke {
                line: 0,
                reason: format!("GO total {total} ≠ sum of HO points {sum}"),
            });
        }
        Ok(UkeFile {
            ir,
            receipts,
            total_points: total,
        })
    }
}

/// レセプト種別 for an outpatient receipt: 1 医科, 1 医保 / 3 後期, 1 単独 / 2 二併 (公費), then
/// 2 本人, 4 未就学者, 6 家族, 8 高齢受給者一般・低所得, 0 高齢受給者7割.
pub fn receipt_kind(visit: &VisitInput, burden_percent: u8) -> String {
    let birth = visit.patient.birth_date;
    // Third digit: 1 単独, 2 二併 (with one 公費), 3 三併, …
    let combined = 1 + visit.insurance.public_expenses.len().min(4);
    if visit.insurance.kind == InsuranceKind::Koki {
        return if burden_percent >= 30 {
            format!("13{combined}0")
        } else {
            format!("13{combined}8")
        };
    }
    let last = if AgeBound::Years(70)
        .threshold(birth)
        .is_some_and(|t| visit.date >= t)
    {
        if burden_percent >= 30 {
            '0'
        } else {
            '8'
        }
    } else if AgeBound::in_range(AgeBound::None, AgeBound::Preschool, birth, visit.date) {
        '4'
    } else if visit.insurance.is_insured_person {
        '2'
    } else {
        '6'
    };
    format!("11{combined}{last}")
}

/// The 審査支払機関 a visit's receipt goes to: 社保 → 支払基金; 国保 and 後期高齢者 → 国保連合会.
pub fn payer_of(v: &VisitInput) -> Payer {
    match v.insurance.kind {
        InsuranceKind::Shaho => Payer::Shaho,
        InsuranceKind::Kokuho | InsuranceKind::Koki => Payer::Kokuho,
    }
}

/// Build the UKE file of one month for one 審査支払機関 from calculated visits (`(input,
/// result)` pairs); visits for the other payer are left out, visits of several months rejected.
/// One receipt per patient; identical lines are merged with their 算定日 counts. Receipts are
/// numbered in patient-id order.
pub fn build_uke(
    facility: &Facility,
    payer: Payer,
    claim_month: NaiveDate,
    visits: &[(&VisitInput, &VisitResult)],
) -> Result<UkeFile> {
    let mut by_patient: BTreeMap<&str, Vec<(&VisitInput, &VisitResult)>> = BTreeMap::new();
    let mut service_month: Option<(i32, u32)> = None;
    for (v, r) in visits.iter().filter(|(v, _)| payer_of(v) == payer) {
        let m = (v.date.year(), v.date.month());
        if *service_month.get_or_insert(m) != m {
            return Err(FeeError::input(
                "visits",
                "visits of more than one month / 複数月の受診が含まれています",
            ));
        }
        by_patient
            .entry(v.patient.id.as_str())
            .or_default()
            .push((v, r));
    }
    let mut receipts = Vec::new();
    let mut total_points = 0i64;
    for (n, (_, mut pv)) in by_patient.into_iter().enumerate() {
        pv.sort_by_key(|(v, _)| v.date);
        let (first, first_r) = pv[0];
        let points: i64 = pv.iter().map(|(_, r)| r.total_points).sum();
        let copay: i64 = pv.iter().map(|(_, r)| r.copay_yen).sum();
        let insurance_copay: i64 = pv.iter().map(|(_, r)| r.insurance_copay_yen).sum();
        let mut days: Vec<NaiveDate> = pv
            .iter()
            .filter(|(_, r)| !r.lines.is_empty())
            .map(|(v, _)| v.date)
            .collect();
        days.dedup();
        total_points += points;
        let re = ReRecord {
            number: n as u32 + 1,
            kind: receipt_kind(first, first_r.burden_percent),
            month: wareki_month(first.date),
            name: first.patient.name.clone(),
            sex: if first.patient.sex == Sex::Female {
                2
            } else {
                1
            },
            birth: wareki(first.patient.birth_date),
            benefit_ratio: if first.insurance.kind == InsuranceKind::Kokuho {
                (100 - first_r.burden_percent).to_string()
            } else {
                String::new()
            },
            special_note: match first.insurance.high_cost {
                Some(HighCostCategory::A) => "26",
                Some(HighCostCategory::I) => "27",
                Some(HighCostCategory::U) => "28",
                Some(HighCostCategory::E) => "29",
                Some(HighCostCategory::O) => "30",
                _ => "",
            }
            .to_string(),
            chart_number: first.patient.id.clone(),
            kana: first.patient.kana.clone(),
        };
        let ho = HoRecord {
            insurer: first.insurance.insurer_number.clone(),
            symbol: first.insurance.symbol.clone(),
            number: first.insurance.number.clone(),
            days: days.len() as u32,
            points,
            copay: Some(insurance_copay),
        };
        let ko: Vec<KoRecord> = first
            .insurance
            .public_expenses
            .iter()
            .map(|pe| KoRecord {
                payer_number: pe.payer_number.clone(),
                recipient_number: pe.recipient_number.clone(),
                days: days.len() as u32,
                points,
                copay: Some(copay),
            })
            .collect();
        let burden = if ko.is_empty() { "1" } else { "2" };
        // 傷病名: union over the month, first occurrence wins.
        let mut sy: Vec<SyRecord> = Vec::new();
        for (v, _) in &pv {
            for d in &v.diagnoses {
                let mods: String = d.modifiers.concat();
                if sy.iter().any(|s| s.code == d.code && s.modifiers == mods) {
                    continue;
                }
                sy.push(SyRecord {
                    code: d.code.clone(),
                    start: wareki(d.start_date),
                    outcome: d.outcome,
                    modifiers: mods,
                    name: if d.code == "0000999" {
                        d.name.clone().unwrap_or_default()
                    } else {
                        String::new()
                    },
                    main: d.main,
                });
            }
        }
        // Merge identical lines across the month, keeping first-seen order within 診療識別.
        type Key = (u8, Vec<(ItemKind, String, Option<String>)>, i64);
        let mut merged: Vec<(Key, &crate::calc::Line, [u32; 31])> = Vec::new();
        for (v, r) in &pv {
            for l in &r.lines {
                let key: Key = (
                    l.shikibetsu,
                    l.items
                        .iter()
                        .map(|i| (i.kind, i.code.clone(), i.quantity.clone()))
                        .collect(),
                    l.points,
                );
                let day = v.date.day0() as usize;
                match merged.iter_mut().find(|(k, _, _)| *k == key) {
                    Some((_, _, d)) => d[day] += l.count,
                    None => {
                        let mut d = [0u32; 31];
                        d[day] = l.count;
                        merged.push((key, l, d));
                    }
                }
            }
        }
        merged.sort_by_key(|(k, _, _)| k.0);
        let mut details = Vec::new();
        let mut last_shiki = None;
        for ((shiki, _, _), line, d) in &merged {
            let count: u32 = d.iter().sum();
            let n_items = line.items.len();
            for (i, it) in line.items.iter().enumerate() {
                let c = ClaimRecord {
                    shikibetsu: if last_shiki == Some(*shiki) {
                        None
                    } else {
                        Some(*shiki)
                    },
                    burden: burden.into(),
                    code: it.code.clone(),
                    quantity: it.quantity.clone().unwrap_or_default(),
                    points: if i + 1 == n_items {
                        Some(line.points)
                    } else {
                        None
                    },
                    count,
                    days: *d,
                };
                last_shiki = Some(*shiki);
                details.push(match it.kind {
                    ItemKind::Procedure => DetailRecord::Si(c),
                    ItemKind::Drug => DetailRecord::Iy(c),
                    ItemKind::Material => DetailRecord::To(ToRecord {
                        claim: c,
                        unit_code: it.unit_code.clone().unwrap_or_default(),
                        unit_price: it.master_amount.clone(),
                        product_name: String::new(),
                    }),
                });
            }
        }
        // Comments: after the last detail of their 診療識別 (or at the end), once per month.
        let mut comments: Vec<&crate::calc::CommentLine> = Vec::new();
        for (_, r) in &pv {
            for c in &r.comments {
                if !comments
                    .iter()
                    .any(|x| x.code == c.code && x.text == c.text && x.shikibetsu == c.shikibetsu)
                {
                    comments.push(c);
                }
            }
        }
        for c in comments {
            let shiki_of = |d: &DetailRecord| match d {
                DetailRecord::Si(c) | DetailRecord::Iy(c) => c.shikibetsu,
                DetailRecord::To(t) => t.claim.shikibetsu,
                DetailRecord::Co(c) => c.shikibetsu,
            };
            // Index of the first detail of the group, then walk to the group's end.
            let start = details
                .iter()
                .position(|d| shiki_of(d) == Some(c.shikibetsu));
            let at = match start {
                Some(s) => details[s + 1..]
                    .iter()
                    .position(|d| shiki_of(d).is_some())
                    .map(|p| s + 1 + p)
                    .unwrap_or(details.len()),
                None => details.len(),
            };
            details.insert(
                at,
                DetailRecord::Co(CoRecord {
                    shikibetsu: if start.is_some() {
                        None
                    } else {
                        Some(c.shikibetsu)
                    },
                    burden: burden.into(),
                    code: c.code.clone(),
                    text: c.text.clone(),
                }),
            );
        }
        receipts.push(Receipt {
            re,
            ho: Some(ho),
            ko,
            sy,
            details,
        });
    }
    Ok(UkeFile {
        ir: IrRecord {
            payer,
            prefecture: facility.prefecture.clone(),
            facility_code: facility.code.clone(),
            facility_name: facility.name.clone(),
            claim_month: wareki_month(claim_month),
            phone: facility.phone.clone(),
        },
        receipts,
        total_points,
    })
}
