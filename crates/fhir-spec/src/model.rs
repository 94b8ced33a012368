//! The type model built from StructureDefinition snapshots.

use crate::hash::FastMap;
use crate::raw::{RawConstraint, RawElement, RawStructureDefinition};
use crate::search::{SearchIndex, SearchParamDef};
use crate::SpecError;
use std::collections::HashMap;
use std::sync::Arc;

/// What kind of type a [`TypeDef`] describes (StructureDefinition.kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TypeKind {
    PrimitiveType,
    ComplexType,
    Resource,
    Logical,
}

/// Severity of an [`crate::Issue`] or of a [`Constraint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    /// The OperationOutcome.issue.severity code.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// Binding strength (ElementDefinition.binding.strength).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingStrength {
    Required,
    Extensible,
    Preferred,
    Example,
}

impl BindingStrength {
    pub fn as_str(self) -> &'static str {
        match self {
            BindingStrength::Required => "required",
            BindingStrength::Extensible => "extensible",
            BindingStrength::Preferred => "preferred",
            BindingStrength::Example => "example",
        }
    }
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "required" => BindingStrength::Required,
            "extensible" => BindingStrength::Extensible,
            "preferred" => BindingStrength::Preferred,
            "example" => BindingStrength::Example,
            _ => return None,
        })
    }
}

/// A terminology binding of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub strength: BindingStrength,
    /// Canonical URL of the ValueSet, possibly with `|version`.
    pub value_set: Option<String>,
}

/// An invariant of an element (ElementDefinition.constraint), xpath dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// e.g. "ele-1", "pat-1".
    pub key: String,
    /// `Error` or `Warning`.
    pub severity: Severity,
    pub human: String,
    /// FHIRPath expression.
    pub expression: Option<String>,
    /// Canonical URL of the StructureDefinition that defined the constraint.
    pub source: Option<String>,
    /// True when marked with the `elementdefinition-bestpractice` extension.
    pub best_practice: bool,
}

/// One allowed type of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeRef {
    /// Type code: a FHIR type name ("string", "HumanName", "Reference", "BackboneElement"),
    /// or a FHIRPath system type ("System.String") for the `value` of primitive types.
    /// Elements that the spec types as a system type with a `structuredefinition-fhir-type`
    /// extension (Element.id, Resource.id, Extension.url) get that FHIR type ("string", "uri").
    pub code: String,
    pub profiles: Vec<String>,
    pub target_profiles: Vec<String>,
}

impl TypeRef {
    /// Type names of the target profiles that are core type URLs
    /// (`"http://hl7.org/fhir/StructureDefinition/Patient"` → "Patient").
    pub fn target_type_names(&self) -> Vec<&str> {
        self.target_profiles
            .iter()
            .filter_map(|p| p.strip_prefix("http://hl7.org/fhir/StructureDefinition/"))
            .collect()
    }
}

/// One element of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementDef {
    /// "Patient.contact.name", `"Observation.value[x]"`.
    pub path: String,
    /// Last path segment without `[x]`: "name", "value".
    pub name: String,
    pub min: u32,
    /// `None` = "*".
    pub max: Option<u32>,
    /// True when the element is represented as a JSON array (its base max is not 1).
    pub is_array: bool,
    /// Allowed types. For a contentReference element these are the referenced element's types.
    pub types: Vec<TypeRef>,
    pub is_choice: bool,
    /// The referenced element path without '#', e.g. "Questionnaire.item".
    pub content_reference: Option<String>,
    pub is_summary: bool,
    pub is_modifier: bool,
    pub binding: Option<Binding>,
    pub constraints: Vec<Constraint>,
    /// ElementDefinition.base.path, e.g. "Resource.id" for "Patient.id".
    pub base_path: String,
}

/// A type (datatype, resource or logical model) from a StructureDefinition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeDef {
    pub name: String,
    pub kind: TypeKind,
    pub is_abstract: bool,
    /// Name of the base type ("DomainResource" for "Patient"); `None` for Base/Element roots.
    pub base: Option<String>,
    pub url: String,
    /// The type this definition constrains (same as `name` except for profiles such as SimpleQuantity).
    pub type_name: String,
    /// Snapshot elements in order (the first one is the root element).
    pub elements: Vec<ElementDef>,
}

/// The result of [`Model::child`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child<'a> {
    pub element: &'a ElementDef,
    /// Concrete type code; for choices resolved from the key suffix ("Quantity" for "valueQuantity").
    pub type_code: &'a str,
    /// What to pass as `parent` for this child's own children: the type name,
    /// or the element path for backbone elements ("Patient.contact").
    pub next_parent: String,
}

/// The result of [`Model::child_ref`]: like [`Child`], borrowing `next_parent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildRef<'a> {
    pub element: &'a ElementDef,
    pub type_code: &'a str,
    pub next_parent: &'a str,
}

/// Primitive type with its JSON representation and lexical rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prim {
    Boolean,
    Integer,
    PositiveInt,
    UnsignedInt,
    Decimal,
    String,
    Markdown,
    Code,
    Id,
    Uri,
    Oid,
    Uuid,
    Base64,
    Date,
    DateTime,
    Instant,
    Time,
    Xhtml,
    /// FHIRPath system types, only as the value of primitive types.
    SystemString,
    SystemBoolean,
    SystemNumber,
}

impl Prim {
    pub(crate) fn from_code(code: &str) -> Option<Prim> {
        Some(match code {
            "boolean" => Prim::Boolean,
            "integer" => Prim::Integer,
            "positiveInt" => Prim::PositiveInt,
            "unsignedInt" => Prim::UnsignedInt,
            "decimal" => Prim::Decimal,
            "string" => Prim::String,
            "markdown" => Prim::Markdown,
            "code" => Prim::Code,
            "id" => Prim::Id,
            "uri" | "url" | "canonical" => Prim::Uri,
            "oid" => Prim::Oid,
            "uuid" => Prim::Uuid,
            "base64Binary" => Prim::Base64,
            "date" => Prim::Date,
            "dateTime" => Prim::DateTime,
            "instant" => Prim::Instant,
            "time" => Prim::Time,
            "xhtml" => Prim::Xhtml,
            "System.String" | "System.Date" | "System.DateTime" | "System.Time" => {
                Prim::SystemString
            }
            "System.Boolean" => Prim::SystemBoolean,
            "System.Integer" | "System.Decimal" => Prim::SystemNumber,
            _ => return None,
        })
    }
}

/// How the checker treats a child slot.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SlotKind {
    Primitive(Prim),
    /// A nested resource (contained, Bundle.entry.resource, Parameters.parameter.resource).
    Resource,
    /// A complex value checked against a parent node.
    Complex(u32),
    /// A complex type that has no node (should not happen with the R4 data).
    Opaque,
}

pub(crate) const NO_NODE: u32 = u32::MAX;

/// One JSON key under a parent node.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub ty: u32,
    pub el: u32,
    /// Index into the element's `types`.
    pub type_idx: u32,
    /// Node for this child's own children, or NO_NODE.
    pub next: u32,
    /// Position of the element in the node's `ordered` list (shared by choice variants).
    pub ordinal: u32,
    pub kind: SlotKind,
}

/// A parent: a type or a backbone element path.
#[derive(Debug, Clone, Default)]
pub(crate) struct Node {
    pub name: String,
    pub children: FastMap<Box<str>, Slot>,
    /// Elements in snapshot order: (type index, element index).
    pub ordered: Vec<(u32, u32)>,
    /// For required elements (min >= 1): ordinal and every JSON key that satisfies it.
    pub required: Vec<(u32, Vec<Box<str>>)>,
}

#[derive(Debug)]
pub(crate) struct Core {
    pub types: Vec<TypeDef>,
    pub type_index: FastMap<String, u32>,
    pub nodes: Vec<Node>,
    pub node_index: FastMap<String, u32>,
    /// Element path → (type index, element index), for the types' own elements.
    pub path_index: FastMap<String, (u32, u32)>,
    pub resource_types: Vec<String>,
    pub compartments: HashMap<String, HashMap<String, Vec<String>>>,
}

/// The FHIR knowledge base: types, elements, search parameters and compartments.
///
/// Cheap to clone (shared internally).
#[derive(Debug, Clone)]
pub struct Model {
    pub(crate) core: Arc<Core>,
    pub(crate) search: Arc<SearchIndex>,
}

impl Model {
    /// The type named `name` ("Patient", "HumanName", "string", "BackboneElement", "SimpleQuantity").
    pub fn type_def(&self, name: &str) -> Option<&TypeDef> {
        self.core
            .type_index
            .get(name)
            .map(|&i| &self.core.types[i as usize])
    }

    /// The type whose canonical URL is `url` (`"http://hl7.org/fhir/StructureDefinition/Patient"`),
    /// with or without `|version`.
    pub fn type_def_by_url(&self, url: &str) -> Option<&TypeDef> {
        let url = url.split('|').next().unwrap_or(url);
        let name = url.strip_prefix("http://hl7.org/fhir/StructureDefinition/")?;
        self.type_def(name).filter(|t| t.url == url)
    }

    /// True for concrete resource types only (not Resource/DomainResource).
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.type_def(name).is_some_and(|t| {
            t.kind == TypeKind::Resource && !t.is_abstract && t.type_name == t.name
        })
    }

    /// All concrete resource types, sorted.
    pub fn resource_types(&self) -> Vec<&str> {
        self.core
            .resource_types
            .iter()
            .map(String::as_str)
            .collect()
    }

    /// All types (datatypes, resources, logical models) in definition order.
    pub fn types(&self) -> impl Iterator<Item = &TypeDef> {
        self.core.types.iter()
    }

    /// Walks the base chain of a type: `ancestors("Patient")` yields "DomainResource", "Resource".
    pub fn ancestors<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let mut cur = self.type_def(name).and_then(|t| t.base.as_deref());
        std::iter::from_fn(move || {
            let out = cur?;
            cur = self.type_def(out).and_then(|t| t.base.as_deref());
            Some(out)
        })
    }

    /// True if `name` is `ancestor` or derives from it ("Patient" is a "DomainResource").
    pub fn is_subtype_of(&self, name: &str, ancestor: &str) -> bool {
        name == ancestor || self.ancestors(name).any(|a| a == ancestor)
    }

    /// The element for JSON key `key` below `parent`, where `parent` is either a type name
    /// ("HumanName") or a full element path of a backbone element ("Patient.contact").
    /// Handles choice types ("valueQuantity" under "Observation"), contentReference
    /// (Questionnaire.item.item → next_parent "Questionnaire.item") and inherited elements.
    /// Keys starting with '_' are not resolved: pass the key without '_'.
    pub fn child(&self, parent: &str, key: &str) -> Option<Child<'_>> {
        self.child_ref(parent, key).map(|c| Child {
            element: c.element,
            type_code: c.type_code,
            next_parent: c.next_parent.to_string(),
        })
    }

    /// Like [`Model::child`] without allocating: `next_parent` borrows from the model.
    pub fn child_ref(&self, parent: &str, key: &str) -> Option<ChildRef<'_>> {
        let node = *self.core.node_index.get(parent)?;
        let slot = self.core.nodes[node as usize].children.get(key)?;
        let element = self.element(slot.ty, slot.el);
        let type_code = element
            .types
            .get(slot.type_idx as usize)
            .map(|t| t.code.as_str())
            .unwrap_or("");
        let next_parent = if slot.next == NO_NODE {
            type_code
        } else {
            self.core.nodes[slot.next as usize].name.as_str()
        };
        Some(ChildRef {
            element,
            type_code,
            next_parent,
        })
    }

    pub(crate) fn element(&self, ty: u32, el: u32) -> &ElementDef {
        &self.core.types[ty as usize].elements[el as usize]
    }

    /// All elements that can appear directly under `parent` (same parent forms as [`Model::child`]),
    /// in snapshot order. Choice elements appear once (`"Observation.value[x]"`).
    pub fn children(&self, parent: &str) -> Vec<&ElementDef> {
        match self.core.node_index.get(parent) {
            Some(&n) => self.core.nodes[n as usize]
                .ordered
                .iter()
                .map(|&(t, e)| self.element(t, e))
                .collect(),
            None => Vec::new(),
        }
    }

    /// The element with the given full path ("Patient.contact.name", `"Observation.value[x]"`).
    pub fn element_by_path(&self, path: &str) -> Option<&ElementDef> {
        let &(t, e) = self.core.path_index.get(path)?;
        Some(self.element(t, e))
    }

    /// Search parameters that apply to `resource_type`, including those defined on Resource and
    /// DomainResource (_id, _lastUpdated, _tag, _profile, _security, _source, _text, _content…).
    /// Sorted by code; a parameter defined on the type itself hides an inherited one with the same code.
    pub fn search_params(&self, resource_type: &str) -> Vec<&SearchParamDef> {
        let mut out: Vec<&SearchParamDef> = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        let chain = std::iter::once(resource_type).chain(self.ancestors(resource_type));
        for base in chain {
            if let Some(map) = self.search.by_base.get(base) {
                for (code, &i) in map {
                    if !seen.contains(&code.as_str()) {
                        seen.push(code);
                        out.push(&self.search.params[i]);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.code.cmp(&b.code));
        out
    }

    /// One search parameter by code for `resource_type` (inherited ones included).
    pub fn search_param(&self, resource_type: &str, code: &str) -> Option<&SearchParamDef> {
        std::iter::once(resource_type)
            .chain(self.ancestors(resource_type))
            .find_map(|base| self.search.by_base.get(base)?.get(code))
            .map(|&i| &self.search.params[i])
    }

    /// The search parameter with this canonical URL (e.g. a composite's component definition
    /// `"http://hl7.org/fhir/SearchParameter/clinical-code"`). With several (replaced) versions,
    /// the last added wins.
    pub fn search_param_by_url(&self, url: &str) -> Option<&SearchParamDef> {
        let url = url.split('|').next().unwrap_or(url);
        self.search.params.iter().rev().find(|p| p.url == url)
    }

    /// Every search parameter known to this model (each once).
    pub fn all_search_params(&self) -> &[SearchParamDef] {
        &self.search.params
    }

    /// A new model with extra SearchParameter resources (JP Core's, a tenant's) added.
    /// Later parameters with the same base+code replace earlier ones (also the R4 ones).
    /// The type model is shared, not copied. Errors name the offending entry.
    pub fn with_search_parameters(&self, extra: &[serde_json::Value]) -> Result<Model, SpecError> {
        let mut search = (*self.search).clone();
        for (i, v) in extra.iter().enumerate() {
            let p = crate::search::parse_search_parameter(v)
                .map_err(|reason| SpecError::InvalidSearchParameter { index: i, reason })?;
            if let Some(b) = p.base.iter().find(|b| {
                !self
                    .type_def(b)
                    .is_some_and(|t| t.kind == TypeKind::Resource)
            }) {
                return Err(SpecError::InvalidSearchParameter {
                    index: i,
                    reason: format!("{}: base '{b}' is not a resource type", p.code),
                });
            }
            search.add(p);
        }
        search.compact();
        Ok(Model {
            core: Arc::clone(&self.core),
            search: Arc::new(search),
        })
    }

    /// Compartment definitions: for compartment "Patient" and resource type "Observation" →
    /// `["subject", "performer"]`; `None` if the type is not in the compartment.
    pub fn compartment_params(&self, compartment: &str, resource_type: &str) -> Option<&[String]> {
        let p = self
            .core
            .compartments
            .get(compartment)?
            .get(resource_type)?;
        if p.is_empty() {
            None
        } else {
            Some(p)
        }
    }

    /// Resource types that can be in the compartment (those with at least one parameter), sorted.
    pub fn compartment_resource_types(&self, compartment: &str) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .core
            .compartments
            .get(compartment)
            .map(|m| {
                m.iter()
                    .filter(|(_, p)| !p.is_empty())
                    .map(|(k, _)| k.as_str())
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// The compartment codes ("Device", "Encounter", "Patient", "Practitioner", "RelatedPerson").
    pub fn compartments(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.core.compartments.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

// ---------------------------------------------------------------------------
// Building

const FHIR_TYPE_EXT: &str = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type";
const BEST_PRACTICE_EXT: &str =
    "http://hl7.org/fhir/StructureDefinition/elementdefinition-bestpractice";

fn parse_max(max: &str) -> Result<Option<u32>, String> {
    if max == "*" {
        Ok(None)
    } else {
        max.parse::<u32>()
            .map(Some)
            .map_err(|_| format!("invalid max '{max}'"))
    }
}

fn normalise_code(code: &str) -> &str {
    code.strip_prefix("http://hl7.org/fhirpath/")
        .unwrap_or(code)
}

pub(crate) fn convert_constraint(c: &RawConstraint) -> Constraint {
    Constraint {
        key: c.key.clone(),
        severity: if c.severity == "warning" {
            Severity::Warning
        } else {
            Severity::Error
        },
        human: c.human.clone(),
        expression: c.expression.clone(),
        source: c.source.clone(),
        best_practice: c
            .extension
            .iter()
            .any(|e| e.url == BEST_PRACTICE_EXT && e.value_boolean == Some(true)),
    }
}

fn convert_element(
    raw: &RawElement,
    type_kind: TypeKind,
    root: &str,
    table: &[Constraint],
) -> Result<ElementDef, String> {
    let path = raw.path.clone();
    let last = path.rsplit('.').next().unwrap_or(&path);
    let is_choice = last.ends_with("[x]");
    let name = last.trim_end_matches("[x]").to_string();
    let max = parse_max(&raw.max)?;
    let base_max = match &raw.base {
        Some(b) => parse_max(&b.max)?,
        None => max,
    };
    // The `value` of a primitive type keeps its System type; elsewhere the fhir-type extension wins.
    let is_primitive_value =
        type_kind == TypeKind::PrimitiveType && path == format!("{root}.value");
    let types = raw
        .types
        .iter()
        .map(|t| {
            let fhir_type = t
                .extension
                .iter()
                .find(|e| e.url == FHIR_TYPE_EXT)
                .and_then(|e| e.value_url.clone());
            let code = match fhir_type {
                Some(ft)
                    if !is_primitive_value && t.code.starts_with("http://hl7.org/fhirpath/") =>
                {
                    ft
                }
                _ => normalise_code(&t.code).to_string(),
            };
            TypeRef {
                code,
                profiles: t.profile.clone(),
                target_profiles: t.target_profile.clone(),
            }
        })
        .collect();
    let binding = raw.binding.as_ref().and_then(|b| {
        Some(Binding {
            strength: BindingStrength::from_code(&b.strength)?,
            value_set: b.value_set.clone(),
        })
    });
    let mut constraints: Vec<Constraint> = raw.constraint.iter().map(convert_constraint).collect();
    for &i in &raw.c {
        let c = table
            .get(i as usize)
            .ok_or_else(|| format!("{path}: constraint #{i} missing"))?;
        constraints.push(c.clone());
    }
    Ok(ElementDef {
        name,
        min: raw.min,
        max,
        is_array: base_max != Some(1) && base_max != Some(0),
        types,
        is_choice,
        content_reference: raw
            .content_reference
            .as_ref()
            .map(|c| c.rsplit('#').next().unwrap_or(c).to_string()),
        is_summary: raw.is_summary,
        is_modifier: raw.is_modifier,
        binding,
        constraints,
        base_path: raw
            .base
            .as_ref()
            .map(|b| b.path.clone())
            .unwrap_or_else(|| path.clone()),
        path,
    })
}

fn convert_type(sd: &RawStructureDefinition, table: &[Constraint]) -> Result<TypeDef, String> {
    let kind = match sd.kind.as_str() {
        "primitive-type" => TypeKind::PrimitiveType,
        "complex-type" => TypeKind::ComplexType,
        "resource" => TypeKind::Resource,
        "logical" => TypeKind::Logical,
        other => return Err(format!("{}: unknown kind '{other}'", sd.name)),
    };
    let raw_elements = sd
        .snapshot
        .as_ref()
        .map(|s| s.element.as_slice())
        .unwrap_or(&[]);
    let root = raw_elements
        .first()
        .map(|e| e.path.clone())
        .unwrap_or_else(|| sd.type_.clone());
    let mut elements = Vec::with_capacity(raw_elements.len());
    for e in raw_elements {
        if e.slice_name.is_some() {
            continue;
        }
        elements
            .push(convert_element(e, kind, &root, table).map_err(|m| format!("{}: {m}", sd.name))?);
    }
    // contentReference elements take the types of the referenced element.
    for i in 0..elements.len() {
        if let Some(target) = elements[i].content_reference.clone() {
            if elements[i].types.is_empty() {
                if let Some(t) = elements.iter().find(|e| e.path == target) {
                    let types = t.types.clone();
                    elements[i].types = types;
                }
            }
        }
    }
    let base = sd
        .base_definition
        .as_ref()
        .map(|b| b.rsplit('/').next().unwrap_or(b).to_string());
    Ok(TypeDef {
        name: sd.name.clone(),
        kind,
        is_abstract: sd.is_abstract,
        base,
        url: sd.url.clone(),
        type_name: sd.type_.clone(),
        elements,
    })
}

fn capitalise(code: &str) -> String {
    let mut c = code.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

pub(crate) fn build_core(
    sds: &[RawStructureDefinition],
    constraint_table: &[RawConstraint],
    compartments: HashMap<String, HashMap<String, Vec<String>>>,
) -> Result<Core, SpecError> {
    let table: Vec<Constraint> = constraint_table.iter().map(convert_constraint).collect();
    let mut types = Vec::with_capacity(sds.len());
    for sd in sds {
        types.push(convert_type(sd, &table).map_err(SpecError::Data)?);
    }
    let mut type_index = FastMap::default();
    for (i, t) in types.iter().enumerate() {
        type_index.insert(t.name.clone(), i as u32);
    }
    let mut resource_types: Vec<String> = types
        .iter()
        .filter(|t| t.kind == TypeKind::Resource && !t.is_abstract && t.name == t.type_name)
        .map(|t| t.name.clone())
        .collect();
    resource_types.sort();

    // Nodes: one per type (keyed by its name), one per backbone path.
    let mut nodes: Vec<Node> = Vec::new();
    let mut node_index: FastMap<String, u32> = FastMap::default();
    for t in &types {
        node_index.insert(t.name.clone(), nodes.len() as u32);
        nodes.push(Node {
            name: t.name.clone(),
            ..Node::default()
        });
    }
    // Per type: map from element path (with the type's root path) to node.
    for (ti, t) in types.iter().enumerate() {
        let Some(root) = t.elements.first().map(|e| e.path.clone()) else {
            continue;
        };
        let own_node = node_index[&t.name];
        let mut parents: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for e in &t.elements[1..] {
            if let Some((p, _)) = e.path.rsplit_once('.') {
                parents.insert(p);
            }
        }
        // Local path → node (root maps to the type's node; backbones get their own).
        let mut local: HashMap<String, u32> = HashMap::new();
        local.insert(root.clone(), own_node);
        // Profiles of datatypes (SimpleQuantity) only get their root node.
        if t.type_name == t.name {
            for e in &t.elements[1..] {
                if parents.contains(e.path.as_str()) {
                    let id = match node_index.get(&e.path) {
                        Some(&existing) => existing,
                        None => {
                            let id = nodes.len() as u32;
                            node_index.insert(e.path.clone(), id);
                            nodes.push(Node {
                                name: e.path.clone(),
                                ..Node::default()
                            });
                            id
                        }
                    };
                    local.insert(e.path.clone(), id);
                }
            }
        }
        for (ei, e) in t.elements.iter().enumerate().skip(1) {
            let Some((parent_path, _)) = e.path.rsplit_once('.') else {
                continue;
            };
            let Some(&parent_node) = local.get(parent_path) else {
                continue;
            };
            if t.kind == TypeKind::PrimitiveType && parent_path == root && e.name == "value" {
                continue;
            }
            let ordinal = nodes[parent_node as usize].ordered.len() as u32;
            nodes[parent_node as usize]
                .ordered
                .push((ti as u32, ei as u32));
            let is_backbone = parents.contains(e.path.as_str());
            let mut keys: Vec<Box<str>> = Vec::new();
            for (k, tr) in e.types.iter().enumerate() {
                let key = if e.is_choice {
                    format!("{}{}", e.name, capitalise(&tr.code))
                } else if k == 0 {
                    e.name.clone()
                } else {
                    continue;
                };
                let next = if is_backbone {
                    local.get(&e.path).copied().unwrap_or(NO_NODE)
                } else if let Some(cr) = &e.content_reference {
                    node_index.get(cr).copied().unwrap_or(NO_NODE)
                } else {
                    node_index.get(&tr.code).copied().unwrap_or(NO_NODE)
                };
                let kind = if let Some(p) = Prim::from_code(&tr.code) {
                    SlotKind::Primitive(p)
                } else if tr.code == "Resource" || tr.code == "DomainResource" {
                    SlotKind::Resource
                } else if next != NO_NODE {
                    SlotKind::Complex(next)
                } else {
                    SlotKind::Opaque
                };
                if matches!(kind, SlotKind::Primitive(_)) {
                    keys.push(format!("_{key}").into_boxed_str());
                }
                keys.push(key.clone().into_boxed_str());
                nodes[parent_node as usize].children.insert(
                    key.into_boxed_str(),
                    Slot {
                        ty: ti as u32,
                        el: ei as u32,
                        type_idx: k as u32,
                        next,
                        ordinal,
                        kind,
                    },
                );
            }
            if e.min >= 1 {
                nodes[parent_node as usize].required.push((ordinal, keys));
            }
        }
    }
    // contentReference paths ("Questionnaire.item.item") also work as parents: they alias
    // the referenced node.
    for t in &types {
        for e in &t.elements {
            if let Some(cr) = &e.content_reference {
                if let Some(&target) = node_index.get(cr) {
                    node_index.entry(e.path.clone()).or_insert(target);
                }
            }
        }
    }
    let mut path_index = FastMap::default();
    for (ti, t) in types.iter().enumerate() {
        // Profiles (SimpleQuantity) reuse their base type's paths: keep the base type's.
        if t.type_name != t.name {
            continue;
        }
        for (ei, e) in t.elements.iter().enumerate() {
            path_index.insert(e.path.clone(), (ti as u32, ei as u32));
        }
    }
    Ok(Core {
        types,
        type_index,
        nodes,
        node_index,
        path_index,
        resource_types,
        compartments,
    })
}
