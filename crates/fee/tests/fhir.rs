//! FHIR R4 → VisitInput mapping (`iryo_fee::fhir`), checked against the hand-written visit
//! examples and through the calculation.

mod common;

use iryo_fee::calc::*;
use iryo_fee::fhir::{self, visits_from_bundle, visits_from_resources};
use iryo_fee::CalcRequest;
use serde_json::{json, Value};
use std::path::Path;

fn example(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn bundle() -> Value {
    example("fhir_visit_bundle.json")
}

fn request(name: &str) -> CalcRequest {
    serde_json::from_value(example(name)).unwrap()
}

/// Replace the resource with this id in the bundle.
fn edit(b: &mut Value, id: &str, f: impl FnOnce(&mut Value)) {
    let r = b["entry"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .map(|e| &mut e["resource"])
        .find(|r| r["id"] == id)
        .unwrap();
    f(r)
}

fn push(b: &mut Value, r: Value) {
    b["entry"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "resource": r }));
}

fn err_of(b: &Value) -> String {
    match visits_from_bundle(b) {
        Ok(v) => panic!("expected an error, got {} visits", v.len()),
        Err(e) => format!("{} / {}", e.message_en(), e.message_ja()),
    }
}

#[test]
fn the_documented_bundle_maps_to_the_two_example_visits() {
    let visits = visits_from_bundle(&bundle()).unwrap();
    assert_eq!(visits.len(), 2);
    // the FHIR form of examples/visit_revisit_labs.json is exactly that visit
    let want = request("visit_revisit_labs.json").visit;
    assert_eq!(
        serde_json::to_value(&visits[0]).unwrap(),
        serde_json::to_value(&want).unwrap()
    );
    // examples/visit_out_of_house.json carries a history line; the mapping leaves history to
    // calculate_month, everything else is the same
    let mut want = request("visit_out_of_house.json").visit;
    want.history.clear();
    assert_eq!(
        serde_json::to_value(&visits[1]).unwrap(),
        serde_json::to_value(&want).unwrap()
    );
    // spot checks of what each element became
    let v = &visits[1];
    assert_eq!(v.date, common::d(2024, 7, 10));
    let rx = v.prescription.as_ref().unwrap();
    assert_eq!(rx.mode, DispensingMode::OutOfHouse);
    assert_eq!(rx.rps.len(), 1, "same 用法 and days → one 剤");
    assert_eq!(rx.rps[0].days, 28);
    assert_eq!(rx.rps[0].drugs[1].quantity, "1.5");
    assert!(rx.rps[0].drugs.iter().all(|d| d.by_generic_name));
    assert_eq!(v.materials[0].quantity, "0.5");
    assert_eq!(v.diagnoses[0].modifiers, vec!["8282".to_string()]);
    assert!(v.diagnoses[0].main);
    assert_eq!(v.insurance.burden_percent, Some(30));
    assert_eq!(v.insurance.symbol, "５");
}

#[test]
fn the_mapped_visit_calculates_like_the_json_example() {
    let store = common::store();
    let req = request("visit_revisit_labs.json");
    let from_json = calculate(store, &req.facility, &req.visit).unwrap();
    let visits = visits_from_bundle(&bundle()).unwrap();
    let from_fhir = calculate(store, &req.facility, &visits[0]).unwrap();
    assert_eq!(from_fhir, from_json);
    assert!(from_fhir.is_ok(), "{:?}", from_fhir.messages);
    assert!(from_fhir.total_points > 0);
    // copay = total × 10 × 30 %, rounded to 10 yen
    let yen = from_fhir.total_points * 10 * 30;
    assert_eq!(from_fhir.copay_yen, (yen + 500) / 1000 * 10);
}

#[test]
fn rp_grouping_by_usage_days_and_group_identifier() {
    let mut b = bundle();
    // a different 用法 → a second 剤
    edit(&mut b, "mr-0003-2", |r| {
        r["dosageInstruction"][0]["timing"]["code"]["coding"][0]["code"] =
            json!("1012040400000000");
    });
    let v = visits_from_bundle(&b).unwrap();
    assert_eq!(v[1].prescription.as_ref().unwrap().rps.len(), 2);
    // the same groupIdentifier → one 剤 again, whatever the 用法 text says
    for id in ["mr-0003-1", "mr-0003-2"] {
        edit(&mut b, id, |r| {
            r["groupIdentifier"] = json!({"system": "urn:rp", "value": "1"});
        });
    }
    let v = visits_from_bundle(&b).unwrap();
    assert_eq!(v[1].prescription.as_ref().unwrap().rps.len(), 1);
    // one groupIdentifier with different days is an error, not two 剤
    edit(&mut b, "mr-0003-2", |r| {
        r["dispenseRequest"]["expectedSupplyDuration"]["value"] = json!(14);
    });
    assert!(err_of(&b).contains("mixes"), "{}", err_of(&b));
    // 頓服 (asNeeded) with a dose count
    let mut b = bundle();
    edit(&mut b, "mr-0001-1", |r| {
        r["category"] = json!([]);
        r["dosageInstruction"][0] = json!({
            "asNeededBoolean": true,
            "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "g"}}]
        });
        r["dispenseRequest"]["expectedSupplyDuration"] =
            json!({"value": 5, "unit": "回", "code": "{times}"});
    });
    let v = visits_from_bundle(&b).unwrap();
    let rp = &v[0].prescription.as_ref().unwrap().rps[0];
    assert_eq!(
        (rp.kind, rp.days, rp.drugs[0].quantity.as_str()),
        (RpKind::AsNeeded, 5, "1")
    );
}

#[test]
fn encounter_extensions_and_initial_visits() {
    let mut b = bundle();
    edit(&mut b, "v-0001", |r| {
        r["type"][0]["coding"][0]["code"] = json!("initial");
        r["extension"] = json!([
            {"url": fhir::EXT_TIME_CATEGORY, "valueCode": "late_night"},
            {"url": fhir::EXT_OUTPATIENT_MANAGEMENT, "valueBoolean": false}
        ]);
    });
    let v = visits_from_bundle(&b).unwrap();
    assert_eq!(v[0].visit_kind, VisitKind::Initial);
    assert_eq!(v[0].time_category, TimeCategory::LateNight);
    assert!(!v[0].outpatient_management);
    edit(&mut b, "v-0001", |r| {
        r["extension"][0]["valueCode"] = json!("lunchtime");
    });
    assert!(err_of(&b).contains("lunchtime"));
}

#[test]
fn coverage_kinds_public_expense_and_period() {
    let mut b = bundle();
    // no Coverage.type: a 6-digit 保険者番号 is 国保, the 家族 relationship is kept
    edit(&mut b, "cov-001", |r| {
        r.as_object_mut().unwrap().remove("type");
        r["payor"][0]["identifier"]["value"] = json!("138057");
        r["relationship"]["coding"][0]["code"] = json!("child");
    });
    push(
        &mut b,
        json!({
            "resourceType": "Coverage", "id": "pub-001", "status": "active",
            "type": {"coding": [{"system": fhir::SYSTEM_COVERAGE_KIND, "code": "public"}]},
            "beneficiary": {"reference": "Patient/p-001"},
            "subscriberId": "1234566",
            "payor": [{"identifier": {"system": fhir::SYSTEM_INSURER_NUMBER, "value": "54136015"}}],
            "costToBeneficiary": [
                {"type": {"coding": [{"system": fhir::SYSTEM_HL7_COPAY, "code": "copaypct"}]},
                 "valueQuantity": {"value": 10}},
                {"type": {"coding": [{"system": fhir::SYSTEM_COPAY_EXTRA, "code": "monthly-cap"}]},
                 "valueMoney": {"value": 5000, "currency": "JPY"}}
            ]
        }),
    );
    let v = visits_from_bundle(&b).unwrap();
    let ins = &v[0].insurance;
    assert_eq!(ins.kind, InsuranceKind::Kokuho);
    assert!(!ins.is_insured_person);
    assert_eq!(
        ins.public_expenses,
        vec![PublicExpense {
            payer_number: "54136015".into(),
            recipient_number: "1234566".into(),
            burden_percent: 10,
            cap_yen: None,
            monthly_cap_yen: Some(5000),
        }]
    );
    // a Coverage that ended before the visit does not count
    edit(&mut b, "cov-001", |r| {
        r["period"]["end"] = json!("2024-06-30")
    });
    assert!(err_of(&b).contains("no active health insurance"));
}

#[test]
fn urn_uuid_references_resolve_through_full_urls() {
    let b = bundle();
    let mut entries = Vec::new();
    for e in b["entry"].as_array().unwrap() {
        let mut r = e["resource"].clone();
        let key = format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        );
        r.as_object_mut().unwrap().remove("id");
        entries.push((format!("urn:uuid:{}", key.replace('/', "-")), r));
    }
    // rewrite every "Type/id" reference to the urn:uuid form
    let mut text = serde_json::to_string(&json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": entries.iter().map(|(u, r)| json!({"fullUrl": u, "resource": r})).collect::<Vec<_>>()
    }))
    .unwrap();
    for (u, _) in &entries {
        let key = u.trim_start_matches("urn:uuid:").replacen('-', "/", 1);
        text = text.replace(
            &format!("\"reference\":\"{key}\""),
            &format!("\"reference\":\"{u}\""),
        );
    }
    let v = visits_from_bundle(&serde_json::from_str(&text).unwrap()).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].procedures.len(), 6);
    assert_eq!(v[1].materials.len(), 1);
}

#[test]
fn resources_list_gives_the_same_visits() {
    let b = bundle();
    let list: Vec<Value> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .collect();
    let a = visits_from_resources(&list).unwrap();
    let c = visits_from_bundle(&b).unwrap();
    assert_eq!(
        serde_json::to_value(&a).unwrap(),
        serde_json::to_value(&c).unwrap()
    );
}

/// (resource id, how to break it, what the error must say)
type BadCase = (&'static str, Box<dyn Fn(&mut Value)>, &'static str);

#[test]
fn bad_resources_are_errors_naming_the_element() {
    let cases: Vec<BadCase> = vec![
        (
            "p-001",
            Box::new(|r| {
                r.as_object_mut().unwrap().remove("birthDate");
            }),
            "Patient/p-001.birthDate",
        ),
        (
            "p-001",
            Box::new(|r| r["birthDate"] = json!("1960-13-01")),
            "Patient/p-001.birthDate",
        ),
        (
            "v-0001",
            Box::new(|r| r["class"]["code"] = json!("IMP")),
            "Encounter/v-0001.class",
        ),
        (
            "v-0001",
            Box::new(|r| {
                r.as_object_mut().unwrap().remove("period");
            }),
            "period.start",
        ),
        (
            "v-0001",
            Box::new(|r| r["subject"]["reference"] = json!("Patient/nobody")),
            "Patient/nobody",
        ),
        (
            "ci-0001-1",
            Box::new(|r| r["code"]["coding"][0]["system"] = json!("http://example.org")),
            "ChargeItem/ci-0001-1.code",
        ),
        (
            "ci-0001-1",
            Box::new(|r| r["code"]["coding"][0]["code"] = json!("16000801")),
            "9 digits",
        ),
        (
            "ci-0001-1",
            Box::new(|r| r["quantity"] = json!({"value": 1.5})),
            "whole positive",
        ),
        (
            "ci-0003-2",
            Box::new(|r| r["quantity"] = json!({"value": -1})),
            "positive",
        ),
        (
            "mr-0001-1",
            Box::new(|r| {
                r["dispenseRequest"]
                    .as_object_mut()
                    .unwrap()
                    .remove("expectedSupplyDuration");
            }),
            "内服 needs the days",
        ),
        (
            "mr-0001-1",
            Box::new(|r| r["dosageInstruction"][0]["doseAndRate"] = json!([])),
            "daily dose",
        ),
        (
            "mr-0001-1",
            Box::new(|r| {
                r.as_object_mut()
                    .unwrap()
                    .remove("medicationCodeableConcept");
            }),
            "medicationCodeableConcept",
        ),
        (
            "mr-0003-2",
            Box::new(|r| r["category"][0]["coding"][0]["code"] = json!("in_house")),
            "mixed",
        ),
        (
            "cov-001",
            Box::new(|r| r["costToBeneficiary"][0]["valueQuantity"]["value"] = json!(130)),
            "copaypct",
        ),
        (
            "c-001",
            Box::new(|r| {
                r.as_object_mut().unwrap().remove("onsetDateTime");
            }),
            "start date",
        ),
    ];
    for (id, f, want) in cases {
        let mut b = bundle();
        edit(&mut b, id, f);
        let e = err_of(&b);
        assert!(e.contains(want), "{id}: '{want}' not in: {e}");
    }
    // not a Bundle, entry without resource
    assert!(visits_from_bundle(&json!({"resourceType": "Patient"})).is_err());
    assert!(visits_from_bundle(&json!({"resourceType": "Bundle", "entry": [{}]})).is_err());
    // an empty Bundle is no visits, not an error
    assert!(visits_from_bundle(&json!({"resourceType": "Bundle"}))
        .unwrap()
        .is_empty());
}

#[test]
fn cancelled_and_not_billable_resources_are_skipped() {
    let mut b = bundle();
    edit(&mut b, "v-0003", |r| r["status"] = json!("cancelled"));
    edit(&mut b, "ci-0001-1", |r| {
        r["status"] = json!("entered-in-error")
    });
    edit(&mut b, "mr-0001-1", |r| r["status"] = json!("cancelled"));
    let v = visits_from_bundle(&b).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].procedures.len(), 5);
    assert!(v[0].prescription.is_none());
}

#[test]
fn the_full_example_in_docs_maps_to_the_out_of_house_visit() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/FEE.md"))
            .unwrap();
    let section = doc.split("### Full example").nth(1).unwrap();
    let block = section
        .split("```json\n")
        .nth(1)
        .unwrap()
        .split("\n```")
        .next()
        .unwrap();
    let bundle: Value = serde_json::from_str(block).unwrap();
    let visits = visits_from_bundle(&bundle).unwrap();
    assert_eq!(visits.len(), 1);
    let mut want = request("visit_out_of_house.json").visit;
    want.history.clear();
    assert_eq!(
        serde_json::to_value(&visits[0]).unwrap(),
        serde_json::to_value(&want).unwrap()
    );
}

#[test]
fn service_requests_are_procedure_orders() {
    let mut b = bundle();
    let sr = |id: &str, code: &str| {
        json!({"resourceType": "ServiceRequest", "id": id, "status": "completed", "intent": "order",
            "code": {"coding": [{"system": fhir::SYSTEM_PROCEDURE, "code": code}]},
            "subject": {"reference": "Patient/p-003"},
            "encounter": {"reference": "Encounter/v-0003"}})
    };
    let before = visits_from_bundle(&b).unwrap()[1].procedures.len();
    // an order with a count, one already billed by a ChargeItem, and a draft
    let mut counted = sr("sr-1", "160000410");
    counted["quantityQuantity"] = json!({"value": 2});
    push(&mut b, counted);
    push(&mut b, sr("sr-2", "160008010"));
    let mut draft = sr("sr-3", "160019410");
    draft["status"] = json!("draft");
    push(&mut b, draft);
    push(
        &mut b,
        json!({"resourceType": "ChargeItem", "id": "ci-sr-2", "status": "billable",
            "code": {"coding": [{"system": fhir::SYSTEM_PROCEDURE, "code": "160008010"}]},
            "subject": {"reference": "Patient/p-003"},
            "context": {"reference": "Encounter/v-0003"},
            "supportingInformation": [{"reference": "ServiceRequest/sr-2"}]}),
    );
    let v = &visits_from_bundle(&b).unwrap()[1];
    assert_eq!(v.id, "v-0003");
    let got: Vec<(&str, u32)> = v.procedures[before..]
        .iter()
        .map(|p| (p.code.as_str(), p.count))
        .collect();
    // the ChargeItem bills 160008010 once; sr-2 is skipped, sr-3 (draft) too
    assert_eq!(got, vec![("160008010", 1), ("160000410", 2)]);
    // a ServiceRequest without a 診療行為 coding is an error naming it
    let mut bad = sr("sr-4", "x");
    bad["code"] = json!({"coding": [{"system": "http://loinc.org", "code": "2345-7"}]});
    push(&mut b, bad);
    assert!(
        err_of(&b).contains("ServiceRequest/sr-4.code"),
        "{}",
        err_of(&b)
    );
}

#[test]
fn injections_and_the_high_cost_category() {
    let mut b = bundle();
    let inj = |id: &str, drug: &str, group: Option<&str>| {
        let mut m = json!({"resourceType": "MedicationRequest", "id": id, "status": "completed",
            "intent": "order",
            "category": [{"coding": [{"system": fhir::SYSTEM_RP_KIND, "code": "injection"}]}],
            "medicationCodeableConcept": {"coding": [{"system": fhir::SYSTEM_DRUG, "code": drug}]},
            "subject": {"reference": "Patient/p-003"},
            "encounter": {"reference": "Encounter/v-0003"},
            "dosageInstruction": [{
                "method": {"coding": [{"system": fhir::SYSTEM_PROCEDURE, "code": "130003510"}]},
                "timing": {"repeat": {"count": 2}},
                "doseAndRate": [{"doseQuantity": {"value": 1}}]}]});
        if let Some(g) = group {
            m["groupIdentifier"] = json!({"value": g});
        }
        m
    };
    // two drugs in one 静注 (same 手技 and 回数), given twice; the 院外 prescription stays as it was
    push(&mut b, inj("mr-i1", "620005159", None));
    push(&mut b, inj("mr-i2", "622345201", None));
    edit(&mut b, "cov-003", |c| {
        c["extension"]
            .as_array_mut()
            .unwrap()
            .push(json!({"url": fhir::EXT_HIGH_COST, "valueCode": "e"}));
    });
    let v = &visits_from_bundle(&b).unwrap()[1];
    assert_eq!(v.injections.len(), 1);
    let i = &v.injections[0];
    assert_eq!((i.procedure.as_deref(), i.count), (Some("130003510"), 2));
    let drugs: Vec<(&str, &str)> = i
        .drugs
        .iter()
        .map(|d| (d.code.as_str(), d.quantity.as_str()))
        .collect();
    assert_eq!(drugs, vec![("620005159", "1"), ("622345201", "1")]);
    assert_eq!(
        v.prescription.as_ref().unwrap().mode,
        DispensingMode::OutOfHouse
    );
    assert_eq!(v.insurance.high_cost, Some(HighCostCategory::E));
    // one groupIdentifier with two 回数 is an error; an unknown 所得区分 too
    let mut b2 = b.clone();
    let mut x = inj("mr-i3", "620005159", Some("G1"));
    x["dosageInstruction"][0]["timing"]["repeat"]["count"] = json!(1);
    push(&mut b2, x);
    push(&mut b2, inj("mr-i4", "620005159", Some("G1")));
    assert!(
        err_of(&b2).contains("MedicationRequest/mr-i4.groupIdentifier"),
        "{}",
        err_of(&b2)
    );
    edit(&mut b, "cov-003", |c| {
        c["extension"].as_array_mut().unwrap().last_mut().unwrap()["valueCode"] = json!("z");
    });
    assert!(
        err_of(&b).contains("fee-high-cost-category"),
        "{}",
        err_of(&b)
    );
}

#[test]
fn treatment_drugs_are_grouped_per_shikibetsu() {
    let mut b = bundle();
    let t = |id: &str, qty: f64, shiki: Option<u8>| {
        let mut m = json!({"resourceType": "MedicationRequest", "id": id, "status": "completed",
            "intent": "order",
            "category": [{"coding": [{"system": fhir::SYSTEM_RP_KIND, "code": "treatment"}]}],
            "medicationCodeableConcept": {"coding": [{"system": fhir::SYSTEM_DRUG, "code": "620000348"}]},
            "subject": {"reference": "Patient/p-003"},
            "encounter": {"reference": "Encounter/v-0003"},
            "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": qty}}]}]});
        if let Some(s) = shiki {
            m["extension"] = json!([{"url": fhir::EXT_SHIKIBETSU, "valueInteger": s}]);
        }
        m
    };
    push(&mut b, t("mr-t1", 2.0, None));
    push(&mut b, t("mr-t2", 1.0, None));
    push(&mut b, t("mr-t3", 3.0, Some(50)));
    let v = &visits_from_bundle(&b).unwrap()[1];
    let got: Vec<(Option<u8>, usize)> = v
        .treatment_drugs
        .iter()
        .map(|g| (g.shikibetsu, g.drugs.len()))
        .collect();
    assert_eq!(got, vec![(None, 2), (Some(50), 1)]);
    // the 院外 prescription is untouched, no injection
    assert_eq!(v.prescription.as_ref().unwrap().rps.len(), 1);
    assert!(v.injections.is_empty());
    // the quantity is required
    let mut bad = t("mr-t4", 1.0, None);
    bad["dosageInstruction"] = json!([{}]);
    push(&mut b, bad);
    let e = err_of(&b);
    assert!(
        e.contains("MedicationRequest/mr-t4.dosageInstruction[0].doseAndRate[0].doseQuantity"),
        "{e}"
    );
}

/// Without the time-category extension, the visit's own date and time give 深夜 and 休日
/// (in JST, also when written in UTC); the extension still decides when present.
#[test]
fn time_category_from_the_visit_time() {
    let category = |start: &str, ext: Option<&str>| {
        let mut b = bundle();
        edit(&mut b, "v-0001", |r| {
            r["period"]["start"] = json!(start);
            if let Some(c) = ext {
                r["extension"] = json!([{"url": fhir::EXT_TIME_CATEGORY, "valueCode": c}]);
            } else if let Some(o) = r.as_object_mut() {
                o.remove("extension");
            }
        });
        let v = visits_from_bundle(&b).unwrap();
        let v = v
            .iter()
            .find(|v| v.id.contains("v-0001"))
            .expect("visit v-0001");
        (v.date.to_string(), v.time_category)
    };
    // a Tuesday morning
    assert_eq!(
        category("2024-07-16T10:00:00+09:00", None),
        ("2024-07-16".into(), TimeCategory::Normal)
    );
    // 海の日 (2024-07-15, a Monday) and a Sunday: 休日
    assert_eq!(
        category("2024-07-15T10:00:00+09:00", None).1,
        TimeCategory::Holiday
    );
    assert_eq!(
        category("2024-07-14T10:00:00+09:00", None).1,
        TimeCategory::Holiday
    );
    // 23:30 on a weekday: 深夜; 05:59 too; 06:00 not
    assert_eq!(
        category("2024-07-16T23:30:00+09:00", None).1,
        TimeCategory::LateNight
    );
    assert_eq!(
        category("2024-07-16T05:59:00+09:00", None).1,
        TimeCategory::LateNight
    );
    assert_eq!(
        category("2024-07-16T06:00:00+09:00", None).1,
        TimeCategory::Normal
    );
    // written in UTC: 2024-07-16T15:30Z is 07-17 00:30 in Japan
    assert_eq!(
        category("2024-07-16T15:30:00Z", None),
        ("2024-07-17".into(), TimeCategory::LateNight)
    );
    // a date without a time: nothing derived
    assert_eq!(category("2024-07-14", None).1, TimeCategory::Normal);
    // the extension wins (時間外 needs the clinic's hours, so only the caller knows it)
    assert_eq!(
        category("2024-07-16T10:00:00+09:00", Some("overtime")).1,
        TimeCategory::Overtime
    );
}
