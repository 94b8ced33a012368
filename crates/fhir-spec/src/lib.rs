//! FHIR R4 and JP definitions embedded in iryo: the single source of FHIR knowledge
//! for the other crates.
//!
//! * the R4 (4.0.1) type model built from the StructureDefinition snapshots: types,
//!   elements, choice types, backbone elements, contentReference ([`Model::child`],
//!   [`Model::children`], [`Model::type_def`]);
//! * search parameters ([`Model::search_params`], [`SearchParamDef::expression_for`]),
//!   extendable with JP Core's or a tenant's ([`Model::with_search_parameters`]);
//! * compartment definitions ([`Model::compartment_params`]);
//! * the structural check run on every write ([`Model::check_structure`]);
//! * the raw definitions for the validator: [`r4_structure_definitions`],
//!   [`r4_value_sets`], [`r4_extension_definitions`], and the JP Core / JP-CLINS /
//!   eCheckupReport packages shipped unmodified ([`jp_resources`]);
//! * terminology: CodeSystems, ValueSets and their expansion for `memberOf()` and binding
//!   checks ([`Terminology::r4`], [`Terminology::r4_jp`]).
//!
//! ```
//! use iryo_fhir_spec::r4;
//! use serde_json::json;
//!
//! let m = r4();
//! let c = m.child("Observation", "valueQuantity").unwrap();
//! assert_eq!(c.element.path, "Observation.value[x]");
//! assert_eq!(c.type_code, "Quantity");
//! assert_eq!(m.child("Patient", "contact").unwrap().next_parent, "Patient.contact");
//!
//! let issues = m.check_structure(&json!({"resourceType": "Patient", "birthDate": "1970-13-01"}));
//! assert_eq!(issues[0].expression, "Patient.birthDate");
//! assert_eq!(issues[0].code, "value");
//! assert_eq!(m.compartment_params("Patient", "Observation").unwrap(), ["subject", "performer"]);
//! ```

mod check;
mod data;
mod hash;
pub use hash::{FastMap, Fnv};
mod model;
pub mod primitive;
mod raw;
mod search;
pub mod terminology;

pub use check::{Issue, MAX_ISSUES};
pub use data::{
    jp_file_by_url, jp_files, jp_raw_files, jp_resources, jp_resources_where, jp_search_parameters,
    load_r4, r4_definition_by_url, r4_extension_definitions, r4_structure_definitions,
    r4_value_sets, JpArchive, JpFile,
};
pub use model::{
    Binding, BindingStrength, Child, ChildRef, Constraint, ElementDef, Model, Severity, TypeDef,
    TypeKind, TypeRef,
};
pub use search::{split_top_level_union, SearchParamDef, SearchParamType};
pub use terminology::{CodeSystemDef, Concept, Expansion, Terminology};

use std::sync::LazyLock;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The embedded definitions could not be read (a build problem, not user input).
    #[error("embedded FHIR definitions are broken: {0}")]
    Data(String),
    /// An entry passed to [`Model::with_search_parameters`] is not a usable SearchParameter.
    #[error("SearchParameter #{index} is invalid: {reason}")]
    InvalidSearchParameter { index: usize, reason: String },
}

static R4: LazyLock<Model> = LazyLock::new(|| match load_r4() {
    Ok(m) => m,
    // The data is compiled in and covered by tests; failing here is a build defect.
    Err(e) => panic!("{e}"),
});

/// The FHIR R4 model, built once on first use (thread-safe).
pub fn r4() -> &'static Model {
    &R4
}

static R4_JP: LazyLock<Model> = LazyLock::new(|| {
    let jp = jp_search_parameters();
    match r4().with_search_parameters(&jp) {
        Ok(m) => m,
        // Shipped data, covered by tests; failing here is a build defect.
        Err(e) => panic!("{e}"),
    }
});

/// The R4 model plus the JP Core SearchParameters (jp-kana-sort, jp-insured-personnumber, …),
/// built once on first use. Types and compartments are shared with [`r4`].
pub fn r4_jp() -> &'static Model {
    &R4_JP
}
