//! FHIR search, independent of storage: what a search parameter value means, and what a resource is indexed under.
//!
//! Two halves meet in the database crate:
//! - [`extract`] evaluates every SearchParameter of a resource type (R4 + JP Core, as FHIRPath
//!   expressions) against a resource and yields [`IndexEntry`] rows (string, token, date range,
//!   number/quantity range, reference, uri);
//! - [`query::parse_query`] turns the query string of `GET [base]/[type]?…` into a [`query::SearchQuery`]:
//!   parameters with modifiers, prefixes, OR values, chains, `_has`, `_sort`, `_include`… —
//!   every value already parsed into the same ranges and normalized forms the index uses.
//!
//! ```
//! use iryo_search::query::{parse_query, Handling};
//! let q = parse_query(iryo_fhir_spec::r4(), Some("Patient"), "name=yamada&birthdate=ge1980&_count=10", Handling::Strict).unwrap();
//! assert_eq!(q.count, Some(10));
//! assert_eq!(q.clauses.len(), 2);
//! ```

pub mod date;
pub mod extract;
pub mod index;
pub mod normalize;
pub mod query;

pub use extract::{extract, Extractor};

/// The model search runs on: FHIR R4 plus the JP Core SearchParameters (e.g. `Patient?jp-kana-sort`,
/// `Coverage?jp-coverage-insuredpersonnumber`).
pub fn model() -> &'static iryo_fhir_spec::Model {
    iryo_fhir_spec::r4_jp()
}
pub use index::{IndexEntry, IndexValue};
