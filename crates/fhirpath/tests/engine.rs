//! Behaviour needed by search indexing and validation, beyond the official suite.

use iryo_fhirpath::{
    parse, Context, Item, PartialDateTime, ProfileValidator, Resolver, Terminology,
};
use serde_json::{json, Value};
use std::collections::HashMap;

fn eval<'a>(src: &str, res: &'a Value) -> Vec<Item<'a>> {
    let ctx = Context::new(res);
    parse(src).unwrap().evaluate(&ctx, res).unwrap()
}

fn types(items: &[Item<'_>]) -> Vec<String> {
    items.iter().map(|i| i.type_name().to_string()).collect()
}

fn strings(items: &[Item<'_>]) -> Vec<String> {
    items
        .iter()
        .map(|i| i.to_fhirpath_string().unwrap_or_else(|| "<complex>".into()))
        .collect()
}

fn bool_of(src: &str, res: &Value) -> Option<bool> {
    let ctx = Context::new(res);
    parse(src).unwrap().evaluate_bool(&ctx, res).unwrap()
}

fn observation() -> Value {
    // parsed from text so that the decimal 72.50 keeps its exact form
    let text = json!({
        "resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
        "subject": {"reference": "Patient/123"},
        "performer": [{"reference": "Practitioner/9"}, {"reference": "#org1"}],
        "contained": [{"resourceType": "Organization", "id": "org1", "name": "検査センター"}],
        "effectivePeriod": {"start": "2024-04-01T09:00:00+09:00", "end": "2024-04-01T10:00:00+09:00"},
        "valueQuantity": {"value": 72.25, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
    })
    .to_string()
    .replace("72.25", "72.50");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn choice_types_resolve_to_their_concrete_type() {
    let o = observation();
    let v = eval("Observation.value", &o);
    assert_eq!(types(&v), ["Quantity"]);
    assert_eq!(types(&eval("Observation.effective", &o)), ["Period"]);
    assert_eq!(
        types(&eval("(Observation.value as Quantity)", &o)),
        ["Quantity"]
    );
    assert!(eval("(Observation.value as CodeableConcept)", &o).is_empty());
    assert_eq!(
        types(&eval("Observation.value.ofType(Quantity).value", &o)),
        ["decimal"]
    );
    // decimals keep their exact text
    assert_eq!(strings(&eval("Observation.value.value", &o)), ["72.50"]);
    assert_eq!(bool_of("Observation.value > 70000 'g'", &o), Some(true));
    assert_eq!(bool_of("Observation.value < 73 'kg'", &o), Some(true));
}

#[test]
fn resolve_without_resolver_yields_the_reference_type() {
    let o = observation();
    let r = eval("Observation.subject.where(resolve() is Patient)", &o);
    assert_eq!(types(&r), ["Reference"]);
    assert_eq!(r[0].as_node().unwrap()["reference"], "Patient/123");
    assert!(eval("Observation.subject.where(resolve() is Group)", &o).is_empty());
    assert_eq!(
        types(&eval("Observation.performer.resolve()", &o)),
        ["Practitioner", "Organization"]
    );
    // the contained resource is really resolved
    assert_eq!(
        strings(&eval(
            "Observation.performer.resolve().ofType(Organization).name",
            &o
        )),
        ["検査センター"]
    );
}

struct Store(HashMap<String, Value>);
impl Resolver for Store {
    fn resolve(&self, reference: &str) -> Option<&Value> {
        self.0.get(reference)
    }
}

#[test]
fn resolve_with_resolver_and_bundle() {
    let o = observation();
    let store = Store(HashMap::from([(
        "Patient/123".to_string(),
        json!({"resourceType": "Patient", "id": "123", "gender": "female"}),
    )]));
    let ctx = Context::new(&o).with_resolver(&store);
    let r = parse("Observation.subject.resolve().gender")
        .unwrap()
        .evaluate(&ctx, &o)
        .unwrap();
    assert_eq!(strings(&r), ["female"]);

    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "id": "a", "birthDate": "2000-02-29"}},
        {"fullUrl": "urn:uuid:2", "resource": {"resourceType": "Observation", "status": "final", "subject": {"reference": "urn:uuid:1"}}}
    ]});
    let obs = &bundle["entry"][1]["resource"];
    let ctx = Context::new(obs).with_root_resource(&bundle);
    let r = parse("subject.resolve().birthDate + 1 year")
        .unwrap()
        .evaluate(&ctx, obs)
        .unwrap();
    assert_eq!(strings(&r), ["2001-02-28"]);
}

#[test]
fn primitive_extensions_and_extension_function() {
    let p = json!({
        "resourceType": "Patient",
        "birthDate": "1970-01-01",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1970-01-01T08:00:00+09:00"}]},
        "name": [{"given": ["太郎", null], "_given": [null, {"extension": [{"url": "http://example.org/x", "valueString": "ext only"}]}]}],
        "extension": [{"url": "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Patient_Race", "valueCodeableConcept": {"text": "日本人"}}]
    });
    assert_eq!(types(&eval("birthDate.extension('http://hl7.org/fhir/StructureDefinition/patient-birthTime').value", &p)), ["dateTime"]);
    assert_eq!(
        strings(&eval("Patient.name.given.select($this.hasValue())", &p)),
        ["true", "false"]
    );
    assert_eq!(
        strings(&eval("Patient.name.given[1].extension.value", &p)),
        ["ext only"]
    );
    assert_eq!(types(&eval("extension('http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Patient_Race').value", &p)), ["CodeableConcept"]);
    assert_eq!(
        strings(&eval("Patient.extension.where(url='http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Patient_Race').value.text", &p)),
        ["日本人"]
    );
}

#[test]
fn typed_nodes_for_search_indexing() {
    let p = json!({"resourceType": "Patient", "id": "p", "active": true, "birthDate": "1970-01-01", "gender": "male",
        "identifier": [{"system": "urn:x", "value": "1"}], "telecom": [{"system": "phone", "value": "0"}],
        "managingOrganization": {"reference": "Organization/1"}, "meta": {"lastUpdated": "2024-01-01T00:00:00Z", "profile": ["http://x/p"]},
        "contact": [{"name": {"family": "山田"}}]});
    assert_eq!(types(&eval("Patient.birthDate", &p)), ["date"]);
    assert_eq!(types(&eval("Patient.gender", &p)), ["code"]);
    assert_eq!(types(&eval("Patient.active", &p)), ["boolean"]);
    assert_eq!(types(&eval("Patient.id", &p)), ["id"]);
    assert_eq!(types(&eval("Patient.identifier", &p)), ["Identifier"]);
    assert_eq!(types(&eval("Patient.telecom", &p)), ["ContactPoint"]);
    assert_eq!(
        types(&eval("Patient.managingOrganization", &p)),
        ["Reference"]
    );
    assert_eq!(types(&eval("Patient.meta.lastUpdated", &p)), ["instant"]);
    assert_eq!(types(&eval("Patient.meta.profile", &p)), ["canonical"]);
    assert_eq!(types(&eval("Patient.contact", &p)), ["BackboneElement"]);
    assert_eq!(types(&eval("Patient.contact.name", &p)), ["HumanName"]);
    assert_eq!(types(&eval("Patient.contact.name.family", &p)), ["string"]);
    // a resource-typed path that does not apply to this resource is simply empty
    assert!(eval("Observation.subject | Patient.link.other", &p).is_empty());
}

#[test]
fn three_valued_logic_and_evaluate_bool() {
    let p = json!({"resourceType": "Patient", "name": [{"family": "A"}]});
    assert_eq!(bool_of("name.exists()", &p), Some(true));
    assert_eq!(
        bool_of("birthDate.exists() implies birthDate < today()", &p),
        Some(true)
    );
    assert_eq!(bool_of("gender = 'male'", &p), None);
    assert_eq!(bool_of("gender = 'male' or name.exists()", &p), Some(true));
    assert_eq!(bool_of("gender = 'male' and name.empty()", &p), Some(false));
    let ctx = Context::new(&p);
    assert!(parse("(1 | 2).not()")
        .unwrap()
        .evaluate_bool(&ctx, &p)
        .is_err());
}

#[test]
fn dates_with_precision_and_fixed_now() {
    let p = json!({"resourceType": "Patient", "birthDate": "2000-02-29"});
    let (now, _) = PartialDateTime::parse_literal("2024-02-28T12:00:00+09:00").unwrap();
    let ctx = Context::new(&p).with_now(now);
    let r = |s: &str| parse(s).unwrap().evaluate(&ctx, &p).unwrap();
    assert_eq!(strings(&r("today()")), ["2024-02-28"]);
    assert_eq!(strings(&r("birthDate + 24 years")), ["2024-02-29"]);
    assert_eq!(strings(&r("birthDate + 1 year")), ["2001-02-28"]);
    assert_eq!(strings(&r("(birthDate + 24 years) > today()")), ["true"]);
    assert_eq!(strings(&r("@2024 < @2024-03")), Vec::<String>::new());
    assert_eq!(
        strings(&r("@2024-03-01T10:00:00+09:00 = @2024-03-01T01:00:00Z")),
        ["true"]
    );
    assert_eq!(strings(&r("@2024-01-31 + 1 month")), ["2024-02-29"]);
    assert_eq!(strings(&r("@T23:30 + 1 hour")), ["00:30"]);
}

#[test]
fn quantities_and_ucum() {
    let e = json!({});
    let b = |s: &str| bool_of(s, &e);
    assert_eq!(b("1 'kg' = 1000 'g'"), Some(true));
    assert_eq!(b("500 'mg' < 1 'g'"), Some(true));
    assert_eq!(b("1 'L' = 1000 'mL'"), Some(true));
    assert_eq!(b("10 'mm' = 1 'cm'"), Some(true));
    assert_eq!(b("1 'h' = 60 'min'"), Some(true));
    assert_eq!(b("1 'd' = 24 'h'"), Some(true));
    assert_eq!(b("2 'wk' = 14 'd'"), Some(true));
    assert_eq!(b("1 'a' > 364 'd'"), Some(true));
    assert_eq!(b("12 'mo' = 1 'a'"), Some(true));
    assert_eq!(b("1 'kg' = 1 'm'"), None);
    assert_eq!(b("1 'kg' < 1 'm'"), None);
    assert_eq!(b("1 'mg/dL' = 10 'mg/L'"), Some(true));
    assert_eq!(b("(1.5 'kg' + 500 'g') = 2 'kg'"), Some(true));
}

#[test]
fn decimals_are_exact() {
    let e = json!({});
    assert_eq!(bool_of("0.1 + 0.2 = 0.3", &e), Some(true));
    let r = eval("1.10 * 3", &e);
    assert_eq!(strings(&r), ["3.30"]);
    assert_eq!(strings(&eval("10 / 4", &e)), ["2.5"]);
    assert_eq!(strings(&eval("7 div 2 | 7 mod 2", &e)), ["3", "1"]);
}

struct Vs;
impl Terminology for Vs {
    fn member_of(&self, item: &Item<'_>, value_set: &str) -> Option<bool> {
        if value_set != "http://hl7.org/fhir/ValueSet/administrative-gender" {
            return None;
        }
        Some(matches!(
            item.to_fhirpath_string().as_deref(),
            Some("male" | "female" | "other" | "unknown")
        ))
    }
}

struct Profiles;
impl ProfileValidator for Profiles {
    fn conforms_to(&self, resource: &Value, url: &str) -> Option<bool> {
        (url == "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient")
            .then(|| resource.get("identifier").is_some())
    }
}

#[test]
fn callbacks_for_member_of_and_conforms_to() {
    let p = json!({"resourceType": "Patient", "gender": "male"});
    let ctx = Context::new(&p)
        .with_terminology(&Vs)
        .with_profile_validator(&Profiles);
    let b = |s: &str| parse(s).unwrap().evaluate_bool(&ctx, &p).unwrap();
    assert_eq!(
        b("gender.memberOf('http://hl7.org/fhir/ValueSet/administrative-gender')"),
        Some(true)
    );
    assert_eq!(b("gender.memberOf('http://example.org/unknown')"), None);
    assert_eq!(
        b("conformsTo('http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient')"),
        Some(false)
    );
    assert_eq!(
        b("conformsTo('http://hl7.org/fhir/StructureDefinition/Patient')"),
        Some(true)
    );
}

#[test]
fn variables_and_environment() {
    let p = json!({"resourceType": "Patient", "id": "x"});
    let ctx = Context::new(&p).with_variable("limit", vec![Item::Integer(3)]);
    let r = parse(
        "%limit + 1 = 4 and %resource.id = 'x' and %context.id = 'x' and %rootResource.id = 'x'",
    )
    .unwrap();
    assert_eq!(r.evaluate_bool(&ctx, &p).unwrap(), Some(true));
    assert!(parse("%undefined").unwrap().evaluate(&ctx, &p).is_err());
}

#[test]
fn html_checks() {
    let ok = json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>山田 太郎</p></div>"}});
    let bad = json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div><img src=\"x\" onerror=\"alert(1)\"/></div>"}});
    let script = json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div><script>alert(1)</script></div>"}});
    assert_eq!(bool_of("text.div.htmlChecks()", &ok), Some(true));
    assert_eq!(bool_of("text.div.htmlChecks()", &bad), Some(false));
    assert_eq!(bool_of("text.div.htmlChecks()", &script), Some(false));
}

#[test]
fn parse_errors_have_positions_and_bilingual_messages() {
    let e = parse("name.where(").unwrap_err();
    assert_eq!(e.position, 11);
    assert!(!e.message_ja.is_empty() && !e.message_en.is_empty());
    assert!(parse("name.unknownFunction()").is_err());
    assert!(parse("'unterminated").is_err());
    assert!(parse("1 +").is_err());
}

#[test]
fn expressions_are_send_sync_and_reusable() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<iryo_fhirpath::Expression>();
    let e = parse("Patient.name.family").unwrap();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let e = e.clone();
            std::thread::spawn(move || {
                let p = json!({"resourceType": "Patient", "name": [{"family": format!("F{i}")}]});
                let ctx = Context::new(&p);
                strings(&e.evaluate(&ctx, &p).unwrap())
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), [format!("F{i}")]);
    }
}

#[test]
fn check_modifiers_and_item_accessors() {
    let p = json!({"resourceType": "Patient", "modifierExtension": [{"url": "http://example.org/m", "valueBoolean": true}],
                   "birthDate": "1970-01-01", "active": true});
    let ctx = Context::new(&p);
    assert!(parse("Patient.checkModifiers()")
        .unwrap()
        .evaluate(&ctx, &p)
        .is_err());
    assert_eq!(
        parse("Patient.checkModifiers('http://example.org/m').count()")
            .unwrap()
            .evaluate(&ctx, &p)
            .unwrap()
            .len(),
        1
    );
    let bd = eval("birthDate", &p);
    assert_eq!(bd[0].as_str(), Some("1970-01-01"));
    assert_eq!(bd[0].as_date_time().map(|d| d.year), Some(1970));
    assert_eq!(eval("active", &p)[0].as_bool(), Some(true));
    assert_eq!(
        eval("1.50", &p)[0].as_decimal().map(|d| d.to_string()),
        Some("1.50".to_string())
    );
    assert_eq!(
        eval("3 'mg'", &p)[0].as_quantity().map(|q| q.unit),
        Some("mg".to_string())
    );
    // a context built for one resource evaluates against a shorter-lived input
    let expr = parse("active").unwrap();
    let r = {
        let local = json!({"resourceType": "Patient", "active": false});
        expr.evaluate_bool(&ctx, &local).unwrap()
    };
    assert_eq!(r, Some(false));
}

#[test]
fn set_operations_stay_linear_on_large_collections() {
    let ids: Vec<Value> = (0..20_000)
        .map(|i| json!({"system": "urn:x", "value": format!("{}", i % 10_000)}))
        .collect();
    let p = json!({"resourceType": "Patient", "identifier": ids});
    let t = std::time::Instant::now();
    let n = |s: &str| eval(s, &p)[0].as_decimal().unwrap().to_string();
    assert_eq!(n("identifier.value.distinct().count()"), "10000");
    assert_eq!(n("identifier.distinct().count()"), "10000");
    assert_eq!(n("(identifier.value | identifier.value).count()"), "10000");
    assert_eq!(
        n("identifier.value.intersect(identifier.value.take(100)).count()"),
        "100"
    );
    assert_eq!(
        n("identifier.value.exclude(identifier.value.take(100)).count()"),
        "19800"
    );
    assert_eq!(
        strings(&eval(
            "identifier.value.take(10).subsetOf(identifier.value)",
            &p
        )),
        ["true"]
    );
    assert!(
        t.elapsed().as_secs() < 20,
        "set operations too slow: {:?}",
        t.elapsed()
    );
}

#[test]
fn evaluate_on_typed_elements() {
    let p = json!({"resourceType": "Patient", "contact": [{"name": {"family": "山田"}, "telecom": [{"system": "phone", "value": "1"}]}]});
    let ctx = Context::new(&p);
    let contact = &p["contact"][0];
    // backbone element by model path, e.g. for invariants on Patient.contact
    let r = parse("name.family | telecom.system")
        .unwrap()
        .evaluate_typed(&ctx, contact, "Patient.contact")
        .unwrap();
    assert_eq!(types(&r), ["string", "code"]);
    let owned = String::from("HumanName");
    let r = parse("family")
        .unwrap()
        .evaluate_typed(&ctx, &contact["name"], owned.clone())
        .unwrap();
    assert_eq!(types(&r), ["string"]);
    assert_eq!(strings(&r), ["山田"]);
}

#[test]
fn aggregates_sum_min_max_avg() {
    let e = json!({});
    assert_eq!(strings(&eval("(1 | 2 | 3).sum()", &e)), ["6"]);
    assert_eq!(strings(&eval("(1 | 2.5).sum()", &e)), ["3.5"]);
    assert_eq!(
        strings(&eval("(1 | 2 | 4).avg()", &e)),
        ["2.3333333333333333333333333333"]
    );
    assert_eq!(
        strings(&eval("(3 | 1 | 2).min() | (3 | 1 | 2).max()", &e)),
        ["1", "3"]
    );
    assert_eq!(strings(&eval("('b' | 'a').min()", &e)), ["a"]);
    assert_eq!(
        strings(&eval("(1 'kg' | 500 'g').sum() = 1.5 'kg'", &e)),
        ["true"]
    );
    assert!(eval("{}.sum()", &e).is_empty());
    let ctx = Context::new(&e);
    assert!(parse("('a' | 'b').sum()")
        .unwrap()
        .evaluate(&ctx, &e)
        .is_err());
}

/// JP-CLINS R1013 (JP_Patient_eCS `valid-value-insurance-patientIdentifier`), expression verbatim.
#[test]
fn jp_clins_insurance_member_id_rule() {
    let src = r#"(identifier.where(system = 'http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID').count()=1 and identifier.where(system = 'http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID').value.matches('^[0-9]{8}:[^:^\\s^　]*:[^:^\\s^　]*:(.{0}|[0-9][0-9])$'))"#;
    let expr = parse(src).unwrap();
    let check = |v: &str| {
        let p = json!({"resourceType": "Patient", "identifier": [{"system": "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID", "value": v}]});
        expr.evaluate_bool(&Context::new(&p), &p).unwrap()
    };
    assert_eq!(check("00012345:あいう:１８７:05"), Some(true));
    assert_eq!(check("00012345::１８７:"), Some(true));
    assert_eq!(check("0012345:a:b:05"), Some(false));
    assert_eq!(check("00012345:a b:c:05"), Some(false));
    assert_eq!(check("00012345:a　b:c:05"), Some(false));
    assert_eq!(check("00012345:a:b:5"), Some(false));
    assert_eq!(check("00012345:a:b"), Some(false));
}
