//! The type model, search parameters and compartments.

use iryo_fhir_spec::{r4, BindingStrength, SearchParamType, Severity, TypeKind};
use serde_json::json;

#[test]
fn types() {
    let m = r4();
    let p = m.type_def("Patient").unwrap();
    assert_eq!(p.kind, TypeKind::Resource);
    assert_eq!(p.base.as_deref(), Some("DomainResource"));
    assert_eq!(p.url, "http://hl7.org/fhir/StructureDefinition/Patient");
    assert_eq!(p.elements[0].path, "Patient");
    assert_eq!(m.type_def("string").unwrap().kind, TypeKind::PrimitiveType);
    assert_eq!(m.type_def("HumanName").unwrap().kind, TypeKind::ComplexType);
    assert!(m.type_def("BackboneElement").is_some());
    assert_eq!(
        m.type_def_by_url("http://hl7.org/fhir/StructureDefinition/Patient|4.0.1")
            .unwrap()
            .name,
        "Patient"
    );
    assert_eq!(
        m.type_def_by_url("http://hl7.org/fhir/StructureDefinition/SimpleQuantity")
            .unwrap()
            .type_name,
        "Quantity"
    );
    assert!(m
        .type_def_by_url("http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient")
        .is_none());
    assert!(m.is_resource_type("Patient"));
    assert!(!m.is_resource_type("Resource"));
    assert!(!m.is_resource_type("DomainResource"));
    assert!(!m.is_resource_type("HumanName"));
    assert!(!m.is_resource_type("MetadataResource"));
    let rts = m.resource_types();
    assert_eq!(rts.len(), 146);
    assert!(rts.windows(2).all(|w| w[0] < w[1]));
    assert!(rts.contains(&"Bundle") && rts.contains(&"Parameters"));
    assert_eq!(
        m.ancestors("Patient").collect::<Vec<_>>(),
        ["DomainResource", "Resource"]
    );
    assert!(m.is_subtype_of("Bundle", "Resource"));
    assert!(!m.is_subtype_of("Bundle", "DomainResource"));
}

#[test]
fn child_lookup() {
    let m = r4();
    let c = m.child("Observation", "valueQuantity").unwrap();
    assert_eq!(c.element.path, "Observation.value[x]");
    assert!(c.element.is_choice);
    assert_eq!(c.element.name, "value");
    assert_eq!(c.type_code, "Quantity");
    assert_eq!(c.next_parent, "Quantity");
    assert_eq!(
        m.child("Observation", "valueString").unwrap().type_code,
        "string"
    );
    assert_eq!(
        m.child("Observation", "valueDateTime").unwrap().type_code,
        "dateTime"
    );
    assert!(m.child("Observation", "valueAddress").is_none());
    assert!(m.child("Observation", "value").is_none());

    // Backbone elements.
    let c = m.child("Patient", "contact").unwrap();
    assert_eq!(c.type_code, "BackboneElement");
    assert_eq!(c.next_parent, "Patient.contact");
    assert!(c.element.is_array);
    assert_eq!(
        m.child("Patient.contact", "name").unwrap().type_code,
        "HumanName"
    );
    // Element-typed backbone in a datatype.
    assert_eq!(
        m.child("Timing", "repeat").unwrap().next_parent,
        "Timing.repeat"
    );
    assert_eq!(
        m.child("Timing.repeat", "boundsPeriod").unwrap().type_code,
        "Period"
    );

    // contentReference.
    let c = m.child("Questionnaire.item", "item").unwrap();
    assert_eq!(c.element.path, "Questionnaire.item.item");
    assert_eq!(
        c.element.content_reference.as_deref(),
        Some("Questionnaire.item")
    );
    assert_eq!(c.next_parent, "Questionnaire.item");
    assert_eq!(c.type_code, "BackboneElement");
    // The contentReference path itself also works as a parent.
    assert_eq!(
        m.child("Questionnaire.item.item", "linkId")
            .unwrap()
            .element
            .path,
        "Questionnaire.item.linkId"
    );

    // Inherited elements.
    for k in [
        "id",
        "meta",
        "implicitRules",
        "language",
        "text",
        "contained",
        "extension",
        "modifierExtension",
    ] {
        assert!(m.child("Patient", k).is_some(), "{k}");
    }
    assert_eq!(m.child("Patient", "id").unwrap().type_code, "string");
    assert_eq!(
        m.child("Patient", "contained").unwrap().type_code,
        "Resource"
    );
    for k in ["id", "extension", "modifierExtension"] {
        assert!(m.child("Patient.contact", k).is_some(), "{k}");
    }
    assert!(m.child("HumanName", "extension").is_some());
    assert!(m.child("HumanName", "modifierExtension").is_none());
    assert_eq!(m.child("Extension", "url").unwrap().type_code, "uri");
    // Primitive types: id and extension, not value.
    assert!(m.child("string", "extension").is_some());
    assert!(m.child("string", "value").is_none());
    // Datatype children.
    let g = m.child("HumanName", "given").unwrap();
    assert_eq!(g.type_code, "string");
    assert_eq!(g.element.max, None);
    assert_eq!(
        m.child("Bundle.entry", "resource").unwrap().type_code,
        "Resource"
    );
    assert!(m.child("NoSuchType", "id").is_none());
    // The borrowing variant agrees.
    let r = m.child_ref("Patient", "contact").unwrap();
    assert_eq!(r.next_parent, "Patient.contact");
    assert_eq!(
        m.child_ref("Observation", "valueQuantity")
            .unwrap()
            .next_parent,
        "Quantity"
    );
    assert!(m.child_ref("Patient", "nope").is_none());
}

#[test]
fn children_lists() {
    let m = r4();
    let names: Vec<&str> = m
        .children("HumanName")
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "id",
            "extension",
            "use",
            "text",
            "family",
            "given",
            "prefix",
            "suffix",
            "period"
        ]
    );
    let obs: Vec<&str> = m
        .children("Observation")
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(
        obs.iter().filter(|p| **p == "Observation.value[x]").count(),
        1
    );
    assert!(obs.contains(&"Observation.component"));
    assert!(!obs.contains(&"Observation.component.code"));
    assert_eq!(
        m.children("Questionnaire.item").len(),
        m.children("Questionnaire.item").len()
    );
    assert!(m
        .children("Questionnaire.item")
        .iter()
        .any(|e| e.path == "Questionnaire.item.item"));
    assert!(m.children("nope").is_empty());
}

#[test]
fn element_details() {
    let m = r4();
    let status = m.child("Observation", "status").unwrap().element;
    assert_eq!(status.min, 1);
    assert!(status.is_modifier && status.is_summary);
    let b = status.binding.as_ref().unwrap();
    assert_eq!(b.strength, BindingStrength::Required);
    assert_eq!(
        b.value_set.as_deref(),
        Some("http://hl7.org/fhir/ValueSet/observation-status|4.0.1")
    );
    let root = &m.type_def("Patient").unwrap().elements[0];
    let dom2 = root.constraints.iter().find(|c| c.key == "dom-2").unwrap();
    assert_eq!(dom2.severity, Severity::Error);
    assert_eq!(
        dom2.expression.as_deref(),
        Some("contained.contained.empty()")
    );
    let dom6 = root.constraints.iter().find(|c| c.key == "dom-6").unwrap();
    assert_eq!(dom6.severity, Severity::Warning);
    assert!(dom6.best_practice);
    let subj = m.child("Observation", "subject").unwrap().element;
    assert_eq!(subj.types[0].code, "Reference");
    assert!(subj.types[0].target_type_names().contains(&"Group"));
    assert!(subj.types[0]
        .target_profiles
        .contains(&"http://hl7.org/fhir/StructureDefinition/Patient".to_string()));
    // System types for primitive values.
    let v = m
        .type_def("boolean")
        .unwrap()
        .elements
        .iter()
        .find(|e| e.path == "boolean.value")
        .unwrap();
    assert_eq!(v.types[0].code, "System.Boolean");
    assert_eq!(
        m.element_by_path("Patient.contact.name").unwrap().types[0].code,
        "HumanName"
    );
    assert_eq!(
        m.element_by_path("Quantity.value").unwrap().path,
        "Quantity.value"
    );
    assert!(m.element_by_path("Patient.nope").is_none());
}

#[test]
fn search_parameters() {
    let m = r4();
    let ps = m.search_params("Patient");
    let codes: Vec<&str> = ps.iter().map(|p| p.code.as_str()).collect();
    for c in [
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_security",
        "_source",
        "_text",
        "_content",
        "name",
        "identifier",
        "birthdate",
        "family",
        "gender",
    ] {
        assert!(codes.contains(&c), "{c} missing: {codes:?}");
    }
    assert!(codes.windows(2).all(|w| w[0] < w[1]));
    let bundle: Vec<&str> = m
        .search_params("Bundle")
        .iter()
        .map(|p| p.code.as_str())
        .collect();
    assert!(bundle.contains(&"_id") && !bundle.contains(&"_text"));

    let birth = m.search_param("Patient", "birthdate").unwrap();
    assert_eq!(birth.kind, SearchParamType::Date);
    assert_eq!(
        birth.expression_for("Patient").as_deref(),
        Some("Patient.birthDate")
    );
    let id = m.search_param("Observation", "_id").unwrap();
    assert_eq!(id.kind, SearchParamType::Token);
    assert_eq!(
        id.expression_for("Observation").as_deref(),
        Some("Resource.id")
    );
    let subj = m.search_param("Observation", "subject").unwrap();
    assert_eq!(subj.kind, SearchParamType::Reference);
    assert!(subj.target.contains(&"Patient".to_string()));
    let cvq = m
        .search_param("Observation", "code-value-quantity")
        .unwrap();
    assert_eq!(cvq.kind, SearchParamType::Composite);
    assert_eq!(cvq.components.len(), 2);
    assert_eq!(
        cvq.components[0],
        (
            "http://hl7.org/fhir/SearchParameter/clinical-code".to_string(),
            "code".to_string()
        )
    );
    let code = m.search_param_by_url(&cvq.components[0].0).unwrap();
    assert_eq!(
        (code.code.as_str(), code.kind),
        ("code", SearchParamType::Token)
    );
    assert!(m.search_param_by_url("http://example.org/nope").is_none());
    let vq = m.search_param("Observation", "value-quantity").unwrap();
    assert_eq!(
        vq.expression_for("Observation").as_deref(),
        Some("(Observation.value as Quantity) | (Observation.value as SampledData)")
    );
    assert!(m.search_param("Patient", "nope").is_none());
    assert!(m.search_param("Nope", "_id").is_none());
}

#[test]
fn expression_for_shared_parameters() {
    let m = r4();
    let p = m.search_param("Observation", "patient").unwrap();
    assert!(p.base.len() > 10);
    assert_eq!(
        p.expression_for("Observation").as_deref(),
        Some("Observation.subject.where(resolve() is Patient)")
    );
    assert_eq!(
        p.expression_for("AllergyIntolerance").as_deref(),
        Some("AllergyIntolerance.patient")
    );
    assert_eq!(p.expression_for("Patient"), None);
    // Every R4 parameter with an expression yields one for every base it declares.
    for sp in m.all_search_params() {
        if sp.expression.is_none() {
            continue;
        }
        for b in &sp.base {
            assert!(
                sp.expression_for(b).is_some(),
                "{} on {b}: {:?}",
                sp.url,
                sp.expression
            );
        }
    }
}

#[test]
fn union_split_respects_nesting() {
    use iryo_fhir_spec::split_top_level_union;
    assert_eq!(
        split_top_level_union("A.b | (C.d | C.e) | F.where(g = 'x|y')"),
        ["A.b", "(C.d | C.e)", "F.where(g = 'x|y')"]
    );
    assert_eq!(split_top_level_union("A.`b|c` | D"), ["A.`b|c`", "D"]);
    assert_eq!(
        split_top_level_union("A.where(x = 'it\\'s|') | B"),
        ["A.where(x = 'it\\'s|')", "B"]
    );
    assert!(split_top_level_union("").is_empty());
    assert_eq!(split_top_level_union("A |"), ["A"]);
}

#[test]
fn extra_search_parameters() {
    let m = r4();
    let extra = json!({
        "resourceType": "SearchParameter",
        "url": "http://jpfhir.jp/fhir/core/SearchParameter/jp-patient-kana",
        "code": "kana",
        "base": ["Patient"],
        "type": "string",
        "expression": "Patient.name.where(extension('http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation').value = 'SYL')"
    });
    let replace = json!({
        "resourceType": "SearchParameter", "url": "http://example.org/gender", "code": "gender",
        "base": ["Patient"], "type": "token", "expression": "Patient.gender"
    });
    let m2 = m.with_search_parameters(&[extra, replace]).unwrap();
    assert_eq!(
        m2.search_param("Patient", "kana").unwrap().kind,
        SearchParamType::String
    );
    assert_eq!(
        m2.search_param("Patient", "gender").unwrap().url,
        "http://example.org/gender"
    );
    // Other bases of the replaced parameter keep the original.
    assert_eq!(
        m2.search_param("Person", "gender").unwrap().url,
        "http://hl7.org/fhir/SearchParameter/individual-gender"
    );
    assert!(m.search_param("Patient", "kana").is_none());
    assert_eq!(
        m2.search_params("Patient").len(),
        m.search_params("Patient").len() + 1
    );
    // The type model is shared.
    assert!(m2.child("Patient", "name").is_some());

    let err = m
        .with_search_parameters(&[json!({"resourceType": "SearchParameter", "code": "x", "base": ["HumanName"], "type": "token"})])
        .unwrap_err();
    assert!(err.to_string().contains("HumanName"), "{err}");
    let bad = [
        json!({"resourceType": "Patient"}),
        json!({"resourceType": "SearchParameter", "code": "x", "base": ["Patient"], "type": "weird"}),
        json!("x"),
    ];
    for b in bad {
        assert!(m.with_search_parameters(&[b]).is_err());
    }
}

#[test]
fn compartments() {
    let m = r4();
    assert_eq!(
        m.compartment_params("Patient", "Observation").unwrap(),
        ["subject", "performer"]
    );
    assert_eq!(
        m.compartment_params("Patient", "Patient").unwrap(),
        ["link"]
    );
    assert_eq!(m.compartment_params("Patient", "ActivityDefinition"), None);
    assert_eq!(m.compartment_params("Nope", "Observation"), None);
    assert!(m.compartment_params("Encounter", "Observation").is_some());
    assert_eq!(
        m.compartments(),
        [
            "Device",
            "Encounter",
            "Patient",
            "Practitioner",
            "RelatedPerson"
        ]
    );
    assert!(m
        .compartment_resource_types("Patient")
        .contains(&"Observation"));
}
