//! Profile validation for iryo, driven by StructureDefinition snapshots: base FHIR R4,
//! JP Core 1.1.2, JP-CLINS 1.10.0 and eCheckupReport 1.5.0 (all shipped inside
//! `iryo-fhir-spec`), plus any StructureDefinition a tenant uploads.
//!
//! [`Validator::validate`] checks a resource against its `meta.profile` (or the profiles
//! given): the base R4 structure ([`iryo_fhir_spec::Model::check_structure`]), profile
//! cardinality on every element and slice, choice-type restrictions, `fixed[x]` and
//! `pattern[x]`, slicing (value, pattern, type, profile and exists discriminators; open,
//! closed, openAtEnd, ordered), extensions resolved by URL, invariants (FHIRPath, evaluated
//! with `iryo-fhirpath`, references resolved inside the Bundle), bindings (required →
//! error, extensible → warning, display mismatch → warning), reference target types,
//! contained resources and Bundle entries (validated against the entry profiles of the
//! Bundle profile and against their own `meta.profile`). Every issue names its location as a
//! FHIRPath expression, the rule key (e.g. `R1013`) for invariants, and carries Japanese and
//! English messages.
//!
//! Profiles are loaded lazily by canonical URL (with or without `|version`) and cached.
//!
//! ```
//! use iryo_validator::Validator;
//! use serde_json::json;
//!
//! let v = Validator::new();
//! let patient = json!({
//!     "resourceType": "Patient",
//!     "meta": {"profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"]},
//!     "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11318814790", "value": "00000010"}],
//!     "gender": "male",
//!     "birthDate": "1970-01-01"
//! });
//! let out = v.validate(&patient, &[]);
//! assert!(!out.has_errors(), "{:?}", out.issues);
//!
//! let bad = json!({"resourceType": "Patient", "gender": "man"});
//! let out = v.validate(&bad, &[]);
//! assert!(out.has_errors());
//! assert_eq!(out.issues[0].expression, "Patient.gender");
//! ```

mod messages;
mod profile;
mod walk;

pub use iryo_fhir_spec::Severity;
pub use profile::ProfileError;

use iryo_fhir_spec::{FastMap, JpArchive, Terminology};
use parking_lot::RwLock;
use profile::Profile;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// One problem found by the validator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationIssue {
    pub severity: Severity,
    /// FHIR issue-type code (`structure`, `required`, `value`, `invariant`, `code-invalid`,
    /// `invalid`, `not-found`, `informational`, `processing`, `too-costly`).
    pub code: &'static str,
    /// FHIRPath location, e.g. `Bundle.entry[2].resource.code.coding[0]`.
    pub expression: String,
    /// The rule key of an invariant (`R1013`, `ele-1`, `dom-3`), `None` for other checks.
    pub key: Option<String>,
    pub message_ja: String,
    pub message_en: String,
}

impl ValidationIssue {
    /// The message in the requested language (`ja` unless `english`).
    pub fn message(&self, english: bool) -> &str {
        if english {
            &self.message_en
        } else {
            &self.message_ja
        }
    }
}

impl std::fmt::Display for ValidationIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} [{}] {}: {} / {}",
            self.severity.as_str(),
            self.code,
            self.expression,
            self.message_ja,
            self.message_en
        )
    }
}

/// The result of a validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub issues: Vec<ValidationIssue>,
}

impl Outcome {
    /// True when an issue of severity error or fatal was found.
    pub fn has_errors(&self) -> bool {
        self.issues
            .iter()
            .any(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
    }

    /// The error and fatal issues.
    pub fn errors(&self) -> impl Iterator<Item = &ValidationIssue> {
        self.issues
            .iter()
            .filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
    }

    /// The distinct invariant keys of issues with the given severity.
    pub fn keys(&self, severity: Severity) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for i in &self.issues {
            if i.severity == severity {
                if let Some(k) = i.key.as_deref() {
                    if !out.contains(&k) {
                        out.push(k);
                    }
                }
            }
        }
        out
    }

    /// The outcome as a FHIR OperationOutcome, messages in Japanese or English.
    /// An outcome without issues yields one `information` issue ("no errors").
    pub fn to_operation_outcome(&self, english: bool) -> Value {
        let mut issues: Vec<Value> = self
            .issues
            .iter()
            .map(|i| {
                let mut o = json!({
                    "severity": i.severity.as_str(),
                    "code": i.code,
                    "diagnostics": i.message(english),
                    "expression": [i.expression],
                });
                if let Some(k) = &i.key {
                    o["details"] = json!({
                        "coding": [{"system": "urn:iryo:validator:rule", "code": k}],
                        "text": i.message(english),
                    });
                }
                o
            })
            .collect();
        if issues.is_empty() {
            issues.push(json!({
                "severity": "information",
                "code": "informational",
                "diagnostics": if english { "No issues detected during validation" } else { "検証で問題は見つかりませんでした" },
            }));
        }
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }
}

fn strip_version(url: &str) -> &str {
    url.split_once('|').map_or(url, |(u, _)| u)
}

/// The profile validator. Cheap to create; thread-safe (`Send + Sync`); profiles are
/// loaded on first use and cached for the validator's lifetime.
pub struct Validator {
    cache: RwLock<FastMap<String, Option<Arc<Profile>>>>,
    /// Base R4 profiles by type name (`Coding`), for the walk into data types.
    base: RwLock<FastMap<String, Option<Arc<Profile>>>>,
    tenant: RwLock<HashMap<String, Value>>,
    jp: JpArchive,
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

impl Validator {
    /// A validator knowing base R4, JP Core 1.1.2, JP-CLINS 1.10.0 and eCheckupReport 1.5.0.
    /// Cheap: profiles are loaded on first use; the shipped terminology starts building on
    /// a background thread (the first validation waits for it if needed).
    pub fn new() -> Validator {
        // The first validation needs both the shipped terminology and the profiles it
        // meets: build the terminology on another core meanwhile (once per process).
        static WARM: std::sync::Once = std::sync::Once::new();
        WARM.call_once(|| {
            let _ = std::thread::Builder::new()
                .name("iryo-terminology".into())
                .spawn(|| {
                    Terminology::r4_jp();
                });
        });
        Validator {
            cache: RwLock::new(FastMap::default()),
            base: RwLock::new(FastMap::default()),
            tenant: RwLock::new(HashMap::new()),
            jp: JpArchive::open(),
        }
    }

    /// Adds (or replaces) a StructureDefinition, e.g. a tenant-uploaded profile or extension.
    /// It must have a snapshot. Returns its canonical URL.
    pub fn add_structure_definition(&self, sd: Value) -> Result<String, ProfileError> {
        let compiled = Profile::compile(&sd)?;
        let url = compiled.url.clone();
        self.tenant.write().insert(url.clone(), sd);
        // Compiled profiles keep what they resolved through other profiles (slice
        // discriminators): start afresh so that nothing refers to a replaced definition.
        let mut cache = self.cache.write();
        cache.clear();
        self.base.write().clear();
        cache.insert(url.clone(), Some(Arc::new(compiled)));
        Ok(url)
    }

    /// Whether a StructureDefinition with this canonical URL is known (loads it if needed).
    pub fn knows_profile(&self, url: &str) -> bool {
        self.profile(url).is_some()
    }

    /// Loads every shipped JP StructureDefinition now (instead of lazily); returns how many.
    pub fn preload(&self) -> usize {
        let urls: Vec<&str> = iryo_fhir_spec::jp_files()
            .iter()
            .filter(|f| f.resource_type == "StructureDefinition" && !f.url.is_empty())
            .map(|f| f.url)
            .collect();
        urls.iter().filter(|u| self.profile(u).is_some()).count()
    }

    pub(crate) fn profile(&self, url: &str) -> Option<Arc<Profile>> {
        let key = strip_version(url);
        if let Some(p) = self.cache.read().get(key) {
            return p.clone();
        }
        let sd = self
            .tenant
            .read()
            .get(key)
            .cloned()
            .or_else(|| self.jp.by_url(key))
            .or_else(|| iryo_fhir_spec::r4_definition_by_url(key));
        let compiled = sd.and_then(|sd| Profile::compile(&sd).ok()).map(Arc::new);
        self.cache.write().insert(key.to_string(), compiled.clone());
        compiled
    }

    /// The base R4 StructureDefinition of a type (`Patient`, `CodeableConcept`).
    pub(crate) fn base_profile(&self, type_name: &str) -> Option<Arc<Profile>> {
        if let Some(p) = self.base.read().get(type_name) {
            return p.clone();
        }
        let p = self.profile(&format!(
            "http://hl7.org/fhir/StructureDefinition/{type_name}"
        ));
        self.base.write().insert(type_name.to_string(), p.clone());
        p
    }

    /// Validates `resource` against `profiles` (canonical URLs, with or without `|version`);
    /// when `profiles` is empty, against the resource's `meta.profile`, or the base R4
    /// definition when it declares none. Never panics on bad input.
    pub fn validate(&self, resource: &Value, profiles: &[&str]) -> Outcome {
        let mut w = walk::Walk::new(self, resource);
        w.run(profiles);
        Outcome { issues: w.finish() }
    }

    /// Validates against the base R4 definitions only (structure, cardinality, invariants,
    /// required bindings), ignoring `meta.profile`.
    pub fn validate_base(&self, resource: &Value) -> Outcome {
        let rt = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        let url = format!("http://hl7.org/fhir/StructureDefinition/{rt}");
        let mut w = walk::Walk::new(self, resource);
        w.only_base = true;
        w.run(&[url.as_str()]);
        Outcome { issues: w.finish() }
    }

    pub(crate) fn terminology(&self) -> &'static Terminology {
        Terminology::r4_jp()
    }
}
