//! Type information used by the evaluator: element types (so that a JSON
//! string under `birthDate` is known to be a FHIR `date`), choice elements,
//! and the type hierarchy for `is`/`as`/`ofType`.
//!
//! The engine talks to a [`TypeInfo`] implementation. The default one is
//! backed by the R4 model from `iryo-fhir-spec` when it knows the type, and
//! falls back to the built-in knowledge below (primitive types, the data-type
//! hierarchy, inference from JSON property names) otherwise.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::{LazyLock, Mutex};

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
pub const PRIMITIVES: &[&str] = &[
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

/// A child lookup result with interned (`'static`) strings.
#[derive(Clone, Copy)]
struct CachedChild {
    type_code: &'static str,
    model_path: &'static str,
    choice: bool,
}

/// The fast hasher of `iryo-fhir-spec` for the small per-thread lookup cache.
type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<iryo_fhir_spec::Fnv>>;

/// Upper bound of cached (parent, key) pairs per thread; keys come from
/// input JSON, so the cache must not grow without limit.
const CACHE_LIMIT: usize = 20_000;

/// (number of entries, parent → key → child)
type ChildCache = (
    usize,
    FnvMap<Box<str>, FnvMap<Box<str>, Option<CachedChild>>>,
);

thread_local! {
    static CHILD_CACHE: RefCell<ChildCache> =
        RefCell::new((0, FnvMap::default()));
}

/// Interns a model path (a backbone element path of the R4 model). The set of
/// such paths is finite, so the leaked memory is bounded by the model size.
fn intern(s: String) -> &'static str {
    static SET: LazyLock<Mutex<HashSet<&'static str>>> =
        LazyLock::new(|| Mutex::new(HashSet::new()));
    let mut set = SET.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = set.get(s.as_str()) {
        return v;
    }
    let leaked: &'static str = Box::leak(s.into_boxed_str());
    set.insert(leaked);
    leaked
}

fn lookup_child(parent: &str, key: &str) -> Option<CachedChild> {
    let c = iryo_fhir_spec::r4().child(parent, key)?;
    let mut tc: &'static str = c.type_code;
    // R4 types Resource.id as System.String/"string"; its FHIR type is `id`.
    if key == "id" && c.element.base_path == "Resource.id" {
        tc = "id";
    }
    let model_path = if c.next_parent == c.type_code {
        tc
    } else {
        intern(c.next_parent)
    };
    Some(CachedChild {
        type_code: tc,
        model_path,
        choice: c.element.is_choice && c.element.name != key,
    })
}

impl TypeInfo for R4Types {
    fn child(&self, parent: &str, key: &str) -> Option<ChildType> {
        let hit = CHILD_CACHE.with(|c| c.borrow().1.get(parent).and_then(|m| m.get(key)).copied());
        let found = match hit {
            Some(v) => v,
            None => {
                let v = lookup_child(parent, key);
                CHILD_CACHE.with(|c| {
                    let mut c = c.borrow_mut();
                    if c.0 < CACHE_LIMIT {
                        c.0 += 1;
                        c.1.entry(parent.into()).or_default().insert(key.into(), v);
                    }
                });
                v
            }
        };
        found.map(|c| ChildType {
            type_code: Cow::Borrowed(c.type_code),
            model_path: Cow::Borrowed(c.model_path),
            choice: c.choice,
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
