//! Serde mirrors of the (stripped) FHIR JSON of the embedded definitions.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(crate) struct RawCore {
    /// Shared constraint table referenced by [`RawElement::c`].
    #[serde(default)]
    pub constraints: Vec<RawConstraint>,
    #[serde(rename = "structureDefinitions")]
    pub structure_definitions: Vec<RawStructureDefinition>,
    #[serde(rename = "searchParameters")]
    pub search_parameters: Vec<RawSearchParameter>,
    pub compartments: Vec<RawCompartment>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawStructureDefinition {
    pub name: String,
    #[serde(default)]
    pub url: String,
    pub kind: String,
    #[serde(rename = "abstract", default)]
    pub is_abstract: bool,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(rename = "baseDefinition")]
    pub base_definition: Option<String>,
    pub snapshot: Option<RawSnapshot>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawSnapshot {
    #[serde(default)]
    pub element: Vec<RawElement>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawElement {
    pub path: String,
    #[serde(rename = "sliceName")]
    pub slice_name: Option<String>,
    #[serde(default)]
    pub min: u32,
    #[serde(default = "star")]
    pub max: String,
    pub base: Option<RawBase>,
    #[serde(rename = "type", default)]
    pub types: Vec<RawType>,
    #[serde(rename = "contentReference")]
    pub content_reference: Option<String>,
    #[serde(rename = "isSummary", default)]
    pub is_summary: bool,
    #[serde(rename = "isModifier", default)]
    pub is_modifier: bool,
    pub binding: Option<RawBinding>,
    #[serde(default)]
    pub constraint: Vec<RawConstraint>,
    /// Indices into [`RawCore::constraints`] (the packed model form of `constraint`).
    #[serde(default)]
    pub c: Vec<u32>,
}

fn star() -> String {
    "*".to_string()
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawBase {
    pub path: String,
    #[serde(default = "star")]
    pub max: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawType {
    pub code: String,
    #[serde(default)]
    pub profile: Vec<String>,
    #[serde(rename = "targetProfile", default)]
    pub target_profile: Vec<String>,
    #[serde(default)]
    pub extension: Vec<RawExtension>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawExtension {
    pub url: String,
    #[serde(rename = "valueUrl")]
    pub value_url: Option<String>,
    #[serde(rename = "valueBoolean")]
    pub value_boolean: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawBinding {
    pub strength: String,
    #[serde(rename = "valueSet")]
    pub value_set: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawConstraint {
    pub key: String,
    #[serde(default)]
    pub severity: String,
    #[serde(default)]
    pub human: String,
    pub expression: Option<String>,
    pub source: Option<String>,
    #[serde(default)]
    pub extension: Vec<RawExtension>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawSearchParameter {
    #[serde(rename = "resourceType")]
    pub resource_type: String,
    #[serde(default)]
    pub url: String,
    pub code: Option<String>,
    #[serde(default)]
    pub base: Vec<String>,
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub expression: Option<String>,
    #[serde(default)]
    pub target: Vec<String>,
    #[serde(default)]
    pub modifier: Vec<String>,
    #[serde(default)]
    pub comparator: Vec<String>,
    #[serde(default)]
    pub chain: Vec<String>,
    #[serde(default)]
    pub component: Vec<RawComponent>,
    #[serde(rename = "multipleOr")]
    pub multiple_or: Option<bool>,
    #[serde(rename = "multipleAnd")]
    pub multiple_and: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawComponent {
    #[serde(default)]
    pub definition: String,
    #[serde(default)]
    pub expression: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawCompartment {
    pub code: String,
    #[serde(default)]
    pub resource: Vec<RawCompartmentResource>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawCompartmentResource {
    pub code: String,
    #[serde(default)]
    pub param: Vec<String>,
}
