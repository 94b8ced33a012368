//! Bilingual message texts: English for the JP invariants (whose `human` is Japanese),
//! and the English `human` of base R4 constraints (JP snapshots carry translations).

use serde_json::Value;
use std::collections::HashMap;
use std::sync::LazyLock;

/// English texts of the JP-CLINS / eCheckupReport rules, by rule number or constraint key.
const RULES_EN: &[(&str, &str)] = &[
    ("R0211", "The first entry must be a Patient."),
    ("R0212", "The Patient in the first entry must conform to the JP_Patient_eCS profile."),
    ("R0213", "The resource must declare conformance to its JP-CLINS profile in meta.profile (with or without |version)."),
    ("R02141", "Bundle.meta.tag must state the resourceType the Bundle carries (system http://jpfhir.jp/fhir/clins/CodeSystem/BundleResourceType_CS)."),
    ("R02142", "The resourceType in Bundle.meta.tag must be one of 'AllergyIntolerance', 'Observation', 'Condition'."),
    ("R02143", "The Bundle must contain at least one resource of the type named in Bundle.meta.tag (AllergyIntolerance, Condition or Observation)."),
    ("R02151", "Bundle.identifier.system must be http://jpfhir.jp/fhir/clins/bundle-identifier."),
    ("R2152", "Bundle.identifier.value must be <institution number, 10 digits>^<year, 4 digits>^<up to 36 half-width letters, digits or hyphens>."),
    ("R9011", "Every resource in the Bundle other than the Patient needs the institution number extension (JP_eCS_InstitutionNumber)."),
    ("R9012", "Every resource in the Bundle other than the Patient needs a valid 10-digit institution number."),
    ("R9013C", "Every Condition in the Bundle needs a contained JP_Encounter and an onsetDateTime."),
    ("R9014C", "Every Condition in the Bundle needs the department extension (JP_eCS_Department)."),
    ("R9013O", "Every Observation in the Bundle needs a contained JP_Encounter."),
    ("R9014O", "Every Observation in the Bundle needs the department extension (JP_eCS_Department)."),
    ("R9016O", "Every Observation in the Bundle needs an encounter element."),
    ("R9017O", "Every Observation in the Bundle needs a performer element."),
    ("R9019O", "Every Observation in the Bundle needs a contained JP_Practitioner."),
    ("R6021", "Observation.code.coding must include a local code (system http://jpfhir.jp/fhir/clins/CodeSystem/JP_CLINS_ObsLabResult_LocalCode_CS)."),
    ("R6031", "The LTS (long-term storage) flag is allowed only on designated infection test items."),
    ("R6081", "hasMember must not be used when the Observation is sent as one of the 5 information items of CLINS."),
    ("R1010", "A local patient ID must use identifier.system 'urn:oid:1.2.392.100495.20.3.51.1' followed by the 10-digit institution number."),
    ("R1012", "Exactly one insured-person identifier (system http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID) is required."),
    ("R1013", "The insured-person identifier must be 'insurer number (8 digits):symbol:number:branch number (2 digits or empty)', without spaces or ':' inside the parts."),
    ("R1112", "The patient name must exist in kanji or kana."),
    ("R1113", "Patient names (kanji and kana) must not contain full-width spaces; separate family and given names by nothing or a half-width space."),
    ("R5020", "Exactly one of the MHLW usage code (e-prescription) or the dummy usage code must be used."),
    ("R5021", "The MHLW usage code (e-prescription) and the dummy usage code must not be used together."),
    ("R3010", "For CLINS, medicationCodeableConcept should contain a YJ code or a standardized per-strength drug ingredient code (Kikakubetsu Yakuzai Seibun); other code systems may be added."),
    ("valid-value-institutionNumberExtension", "The institution number (valueIdentifier.value) must be 10 digits: prefecture (2), category (1–3) and institution code (7)."),
    ("needs-performer-on-CLINS", "Note: a performer is required when this Observation is sent to CLINS as one of the 5 information items (no problem otherwise)."),
    ("warn-localCode-observation-laboresult", "Note: Observation.code.coding needs a local code when sent to CLINS as one of the 5 information items (no problem otherwise)."),
    ("referenceRangeLowUnits-isSameAs-resultValueUnits", "The unit of referenceRange.low must be exactly the unit of the result value."),
    ("referenceRangeHighUnits-isSameAs-resultValueUnits", "The unit of referenceRange.high must be exactly the unit of the result value."),
    ("checkExist-CDASection-or-CompositionSection", "Exactly one of the CDA section and the structured-information section must exist."),
    ("checkExist-CDASection-or-structuredSection", "Exactly one of the CDA section and the structured-information section must exist."),
    ("validEntryProfile-AllergyIntolerance", "An AllergyIntolerance entry must conform to some version of JP_AllergyIntolerance_eCS."),
    ("validEntryProfile-Condition", "A Condition entry must conform to some version of JP_Condition_eCS."),
    ("validEntryProfile-MedicationRequest", "A MedicationRequest entry must conform to some version of JP_MedicationRequest_eCS."),
    ("validEntryProfile-ObservationLabResult", "An Observation entry must conform to some version of JP_Observation_LabResult_eCS."),
    ("bundle-entry-JP-Patient-CLINS-eCheckupGeneral", "The Bundle must contain a Patient whose meta.profile is JP_Patient_CLINS_eCheckupGeneral."),
    ("bundle-entry0-JP-Composition-eCheckupGeneral", "entry[0] must be a Composition whose meta.profile is JP_Composition_eCheckupGeneral."),
    ("bundle-entry-JP-OrganizationReporter-eCheckupGeneral", "The Bundle must contain an Organization whose meta.profile is JP_Organization_eCheckupGeneral."),
    ("bundle-entry-JP-PractitionerReporter-eCheckupGeneral", "The Bundle must contain a Practitioner whose meta.profile is JP_Practitioner_eCheckupGeneral."),
    ("bundle-entry-JP-Encounter-eCheckupGeneral", "The Bundle must contain an Encounter whose meta.profile is JP_Encounter_eCheckupGeneral."),
];

/// English `human` of the base R4 constraints, by key (`dom-3`, `con-3`, …).
static BASE_EN: LazyLock<HashMap<String, String>> = LazyLock::new(|| {
    let mut m = HashMap::new();
    for sd in iryo_fhir_spec::r4_structure_definitions() {
        let Some(els) = sd.pointer("/snapshot/element").and_then(Value::as_array) else {
            continue;
        };
        for e in els {
            for c in e
                .get("constraint")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let (Some(k), Some(h)) = (
                    c.get("key").and_then(Value::as_str),
                    c.get("human").and_then(Value::as_str),
                ) {
                    m.entry(k.to_string()).or_insert_with(|| h.to_string());
                }
            }
        }
    }
    m
});

fn is_japanese(s: &str) -> bool {
    s.chars().any(|c| c as u32 >= 0x3000)
}

/// (message_ja, message_en) for a failed invariant. `rule` is `R1013` or the constraint key.
pub(crate) fn invariant(rule: &str, key: &str, human: &str, expr: &str) -> (String, String) {
    let human = human.trim();
    let ja = if human.starts_with(rule) {
        human.to_string()
    } else if human.is_empty() {
        format!("{rule}: 制約を満たしていません: {expr}")
    } else {
        format!("{rule}: {human}")
    };
    let en_text = RULES_EN
        .iter()
        .find(|(k, _)| *k == rule || *k == key)
        .map(|(_, t)| t.to_string())
        .or_else(|| BASE_EN.get(key).cloned())
        .or_else(|| {
            // JP snapshots often carry "日本語 / English".
            human
                .rsplit_once(" / ")
                .map(|(_, en)| en.trim().to_string())
                .filter(|en| !en.is_empty() && !is_japanese(en))
        })
        .or_else(|| (!is_japanese(human) && !human.is_empty()).then(|| human.to_string()))
        .unwrap_or_else(|| format!("Constraint failed: {expr}"));
    (ja, format!("{rule}: {en_text}"))
}

/// Short label for a binding strength.
pub(crate) fn strength_ja(s: iryo_fhir_spec::BindingStrength) -> &'static str {
    match s {
        iryo_fhir_spec::BindingStrength::Required => "必須(required)",
        iryo_fhir_spec::BindingStrength::Extensible => "拡張可能(extensible)",
        iryo_fhir_spec::BindingStrength::Preferred => "推奨(preferred)",
        iryo_fhir_spec::BindingStrength::Example => "例示(example)",
    }
}
