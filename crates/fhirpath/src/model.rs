//! Type information used by the evaluator: element types (so that a JSON
//! string under `birthDate` is known to be a FHIR `date`), choice elements,
//! and the type hierarchy for `is`/`as`/`ofType`.
//!
//! The engine talks to a [`TypeInfo`] implementation. The default one is
//! backed by the R4 model from `iryo-fhir-spec` when it knows the type, and
//! falls back to the built-in knowledge below (primitive types, the data-type
//! hierarchy, inference from JSON property names) otherwise.

use std::borrow::Cow;

/// The type of a child element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildType {
    /// FHIR type code, e.g. `HumanName`, `date`, `BackboneElement`, `Resource`.
    pub type_code: Cow<'static, str>,
    /// Model path used to look up the children of this element
    /// (equal to `type_code` except for backbone elements, e.g. `Patient.contact`).
    pub model_path: Cow<'static, str>,
    /// True when the JSON key is a type-suffixed choice key (`valueQuantity` for `value[x]`).
    pub choice: bool,
}

/// Source of type information for the engine.
pub trait TypeInfo: Send + Sync {
    /// Type of the JSON property `key` (as spelled in JSON, e.g. `valueQuantity`)
    /// of an element whose model path is `parent`.
    fn child(&self, parent: &str, key: &str) -> Option<ChildType>;
    /// Whether the model has element definitions for `parent` (a type name or backbone path).
    fn knows(&self, parent: &str) -> bool;
    /// Whether `parent` has an element named `name` (for choices: without `[x]`).
    fn has_element(&self, parent: &str, name: &str) -> bool;
    /// The base type of a type (e.g. `code` → `string`, `Patient` → `DomainResource`).
    fn base(&self, type_name: &str) -> Option<Cow<'static, str>>;
    /// Whether `name` is a known FHIR type (resource, data type or primitive).
    fn is_type(&self, name: &str) -> bool;
}

/// FHIR R4 primitive types.
pub(crate) const PRIMITIVES: &[&str] = &[
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "markdown",
    "oid",
    "positiveInt",
    "string",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
    "xhtml",
];

const COMPLEX: &[&str] = &[
    "Element",
    "BackboneElement",
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "Coding",
    "ContactDetail",
    "ContactPoint",
    "Contributor",
    "Count",
    "DataRequirement",
    "Distance",
    "Dosage",
    "Duration",
    "Expression",
    "Extension",
    "HumanName",
    "Identifier",
    "Meta",
    "Money",
    "MoneyQuantity",
    "Narrative",
    "ParameterDefinition",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "RelatedArtifact",
    "SampledData",
    "Signature",
    "SimpleQuantity",
    "Timing",
    "TriggerDefinition",
    "UsageContext",
    "ElementDefinition",
    "MarketingStatus",
    "Population",
    "ProdCharacteristic",
    "ProductShelfLife",
    "SubstanceAmount",
    "Resource",
    "DomainResource",
];

/// Built-in base type table (R4), used when the model does not answer.
pub(crate) fn builtin_base(t: &str) -> Option<&'static str> {
    Some(match t {
        "code" | "id" | "markdown" => "string",
        "url" | "canonical" | "oid" | "uuid" => "uri",
        "positiveInt" | "unsignedInt" => "integer",
        "Age" | "Count" | "Distance" | "Duration" | "MoneyQuantity" | "SimpleQuantity" => {
            "Quantity"
        }
        "BackboneElement" => "Element",
        "Bundle" | "Binary" | "Parameters" => "Resource",
        "DomainResource" => "Resource",
        "Resource" | "Element" => return None,
        _ if PRIMITIVES.contains(&t) => "Element",
        _ if COMPLEX.contains(&t) => "Element",
        _ if t.starts_with(|c: char| c.is_ascii_uppercase()) => "DomainResource",
        _ => return None,
    })
}

/// Type from a choice-element JSON key suffix (`Quantity`, `String` → `string`, `DateTime` → `dateTime`).
pub(crate) fn choice_suffix_type(suffix: &str) -> Option<Cow<'static, str>> {
    if suffix.is_empty() || !suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    let mut lower = String::with_capacity(suffix.len());
    let mut cs = suffix.chars();
    if let Some(c) = cs.next() {
        lower.push(c.to_ascii_lowercase());
    }
    lower.extend(cs);
    if let Some(p) = PRIMITIVES.iter().find(|p| **p == lower) {
        return Some(Cow::Borrowed(p));
    }
    if let Some(c) = COMPLEX.iter().find(|c| **c == suffix) {
        return Some(Cow::Borrowed(c));
    }
    Some(Cow::Owned(suffix.to_string()))
}

/// Type information from the built-in tables only (no element definitions):
/// element types are inferred from the JSON.
pub struct BuiltinTypes;

impl TypeInfo for BuiltinTypes {
    fn child(&self, _parent: &str, _key: &str) -> Option<ChildType> {
        None
    }
    fn knows(&self, _parent: &str) -> bool {
        false
    }
    fn has_element(&self, _parent: &str, _name: &str) -> bool {
        false
    }
    fn base(&self, type_name: &str) -> Option<Cow<'static, str>> {
        builtin_base(type_name).map(Cow::Borrowed)
    }
    fn is_type(&self, name: &str) -> bool {
        PRIMITIVES.contains(&name)
            || COMPLEX.contains(&name)
            || name.starts_with(|c: char| c.is_ascii_uppercase())
    }
}

/// The FHIR R4 model from `iryo-fhir-spec` (element definitions of every
/// resource and data type), with the built-in tables as fallback.
pub struct R4Types;

impl TypeInfo for R4Types {
    fn child(&self, parent: &str, key: &str) -> Option<ChildType> {
        let c = iryo_fhir_spec::r4().child(parent, key)?;
        let mut tc: &'static str = c.type_code;
        // R4 types Resource.id as System.String/"string"; its FHIR type is `id`.
        if key == "id" && c.element.base_path == "Resource.id" {
            tc = "id";
        }
        let model_path = if c.next_parent == tc {
            Cow::Borrowed(tc)
        } else {
            Cow::Owned(c.next_parent)
        };
        Some(ChildType {
            type_code: Cow::Borrowed(tc),
            model_path,
            choice: c.element.is_choice && c.element.name != key,
        })
    }
    fn knows(&self, parent: &str) -> bool {
        let m = iryo_fhir_spec::r4();
        m.type_def(parent).is_some()
            || (parent.contains('.') && m.element_by_path(parent).is_some())
    }
    fn has_element(&self, parent: &str, name: &str) -> bool {
        iryo_fhir_spec::r4()
            .children(parent)
            .iter()
            .any(|e| e.name == name)
    }
    fn base(&self, type_name: &str) -> Option<Cow<'static, str>> {
        match iryo_fhir_spec::r4().type_def(type_name) {
            Some(t) => match t.base.as_deref() {
                Some(b) => Some(Cow::Borrowed(b)),
                None => builtin_base(type_name).map(Cow::Borrowed),
            },
            None => builtin_base(type_name).map(Cow::Borrowed),
        }
    }
    fn is_type(&self, name: &str) -> bool {
        iryo_fhir_spec::r4().type_def(name).is_some()
    }
}

/// Whether FHIR type `t` is `ancestor` or derives from it.
pub(crate) fn derives_from(model: &dyn TypeInfo, t: &str, ancestor: &str) -> bool {
    if t == ancestor {
        return true;
    }
    let mut cur: Cow<'static, str> = match model.base(t) {
        Some(b) => b,
        None => return false,
    };
    for _ in 0..16 {
        if cur == ancestor {
            return true;
        }
        match model.base(&cur) {
            Some(b) => cur = b,
            None => return false,
        }
    }
    false
}

/// The model used by default.
pub(crate) fn default_model() -> &'static dyn TypeInfo {
    &R4Types
}
