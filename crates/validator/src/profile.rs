//! A StructureDefinition snapshot compiled into an element tree the walker can follow:
//! children grouped by name, slices attached to their sliced element, constraints compiled
//! to FHIRPath expressions once.

use iryo_fhir_spec::{BindingStrength, Severity};
use iryo_fhirpath::Expression;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock};

/// One `type` entry of an element.
#[derive(Debug, Clone)]
pub(crate) struct ElemType {
    pub code: String,
    pub profiles: Vec<String>,
    pub target_profiles: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiscKind {
    Value,
    Pattern,
    Type,
    Profile,
    Exists,
}

#[derive(Debug, Clone)]
pub(crate) struct Slicing {
    pub discriminators: Vec<(DiscKind, String)>,
    pub ordered: bool,
    /// `closed`, `open` or `openAtEnd`.
    pub rules: String,
}

/// A compiled invariant.
pub(crate) struct Invariant {
    /// The constraint key (`ele-1`, `valid-value-insurance-patientIdentifier`).
    pub key: String,
    /// The rule number named in the human text (`R1013`), when there is one.
    pub rule: Option<String>,
    pub severity: Severity,
    pub human: String,
    pub expression: Option<Arc<Expression>>,
    pub source_text: String,
    /// The child names through which the expression reads the element, when it reads it
    /// only through them (see [`Expression::focus_names`]).
    guard: Option<Vec<String>>,
    /// The verdict on an element that has none of the `guard` names, computed once.
    empty: OnceLock<Verdict>,
}

/// The outcome of one invariant evaluation.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    Pass,
    Fail,
    /// The expression returned more than one item.
    Several,
    /// The expression could not be evaluated (ja, en).
    Error(String, String),
}

impl Verdict {
    pub(crate) fn of(
        out: Result<Vec<iryo_fhirpath::Item<'_>>, iryo_fhirpath::EvalError>,
    ) -> Verdict {
        match out {
            Ok(items) => match items.as_slice() {
                [] => Verdict::Pass,
                [iryo_fhirpath::Item::Boolean(b)] => {
                    if *b {
                        Verdict::Pass
                    } else {
                        Verdict::Fail
                    }
                }
                [_] => Verdict::Pass,
                _ => Verdict::Several,
            },
            Err(e) => Verdict::Error(e.message_ja, e.message_en),
        }
    }
}

static EMPTY_OBJECT: LazyLock<Value> = LazyLock::new(|| Value::Object(Default::default()));

impl Invariant {
    /// True when the expression reads `val` only through child names and none is present
    /// (nor its `_name` or a choice variant `nameType`): the verdict is then the one on an
    /// empty element ([`Invariant::empty_verdict`]).
    pub(crate) fn absent_in(&self, val: &Value) -> bool {
        let (Some(names), Value::Object(o)) = (&self.guard, val) else {
            return false;
        };
        !o.keys().any(|k| {
            let k = k.strip_prefix('_').unwrap_or(k);
            names.iter().any(|n| {
                k.strip_prefix(n.as_str()).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_uppercase())
                })
            })
        })
    }

    /// The verdict on an element without any of the guard names (evaluated once).
    pub(crate) fn empty_verdict(&self) -> Verdict {
        self.empty
            .get_or_init(|| match &self.expression {
                Some(e) => Verdict::of(e.evaluate(&iryo_fhirpath::Context::empty(), &EMPTY_OBJECT)),
                None => Verdict::Pass,
            })
            .clone()
    }
}

/// A group of instance values under one element name: the unsliced element and its slices.
pub(crate) struct ChildGroup {
    /// Element name as in the path (`value[x]`, `coding`).
    pub name: String,
    /// The name as shown in locations (`value`, `coding`).
    pub shown: String,
    pub base: usize,
    pub slices: Vec<usize>,
    /// [`key_bit`] of the name (0 for choice elements, which are always looked up).
    pub bit: u64,
    /// The element or one of its slices has `min` ≥ 1.
    pub required: bool,
    /// How values are assigned to the slices, built on first use.
    pub index: OnceLock<crate::walk::SliceIndex>,
}

impl ChildGroup {
    fn new(name: String, base: usize) -> ChildGroup {
        ChildGroup {
            shown: name.trim_end_matches("[x]").to_string(),
            bit: if name.ends_with("[x]") {
                0
            } else {
                key_bit(&name)
            },
            name,
            base,
            slices: Vec::new(),
            required: false,
            index: OnceLock::new(),
        }
    }
}

pub(crate) struct Elem {
    pub id: String,
    pub path: String,
    pub slice_name: Option<String>,
    pub min: u32,
    /// `None` = `*`.
    pub max: Option<u32>,
    pub types: Vec<ElemType>,
    pub fixed: Option<Value>,
    pub pattern: Option<Value>,
    pub slicing: Option<Slicing>,
    pub binding: Option<(BindingStrength, String)>,
    pub invariants: Vec<Arc<Invariant>>,
    pub content_reference: Option<String>,
    pub children: Vec<ChildGroup>,
}

/// A cheap 1-of-64 bit for an element name (`_name` counts as `name`): an object whose
/// [`key_mask`] lacks a group's bit has no value for it.
#[inline]
pub(crate) fn key_bit(name: &str) -> u64 {
    let b = name.as_bytes();
    let (first, last) = (
        *b.first().unwrap_or(&0) as u64,
        *b.last().unwrap_or(&0) as u64,
    );
    1u64 << ((b.len() as u64 * 7 + first * 3 + last) & 63)
}

/// The union of [`key_bit`] over an object's keys.
pub(crate) fn key_mask(obj: &serde_json::Map<String, Value>) -> u64 {
    obj.keys()
        .map(|k| key_bit(k.strip_prefix('_').unwrap_or(k)))
        .fold(0, |a, b| a | b)
}

/// A compiled StructureDefinition.
pub(crate) struct Profile {
    pub url: String,
    /// The type constrained (`Patient`, `Extension`, `CodeableConcept`).
    pub type_name: String,
    pub kind: String,
    pub elements: Vec<Elem>,
    by_id: HashMap<String, usize>,
}

/// FHIRPath expressions shared by all profiles (the same text appears in many snapshots).
static EXPRESSIONS: LazyLock<Mutex<HashMap<String, Option<Arc<Expression>>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn compile(src: &str) -> Option<Arc<Expression>> {
    let mut cache = EXPRESSIONS.lock();
    if let Some(e) = cache.get(src) {
        return e.clone();
    }
    let e = iryo_fhirpath::parse(src).ok().map(Arc::new);
    cache.insert(src.to_string(), e.clone());
    e
}

/// Invariants shared by all profiles, keyed by (key, expression, human).
static INVARIANTS: LazyLock<Mutex<HashMap<(String, String, String), Arc<Invariant>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The rule number at the start of a JP constraint's human text: `R1013:…`, `R6031 …`, `R1113- …`.
pub(crate) fn rule_number(human: &str) -> Option<String> {
    let t = human.trim_start();
    let b = t.as_bytes();
    if b.first() != Some(&b'R') {
        return None;
    }
    let digits = b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits < 3 {
        return None;
    }
    let mut end = 1 + digits;
    while end < b.len() && b[end].is_ascii_uppercase() {
        end += 1;
    }
    Some(t[..end].to_string())
}

fn is_best_practice(c: &Value) -> bool {
    c.get("extension")
        .and_then(Value::as_array)
        .is_some_and(|exts| {
            exts.iter().any(|e| {
                e["url"] == "http://hl7.org/fhir/StructureDefinition/elementdefinition-bestpractice"
                    && e["valueBoolean"] == true
            })
        })
}

fn invariant(c: &Value) -> Option<Arc<Invariant>> {
    let key = c.get("key")?.as_str()?.to_string();
    let human = c
        .get("human")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let expr = c
        .get("expression")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut cache = INVARIANTS.lock();
    let k = (key, expr, human);
    if let Some(i) = cache.get(&k) {
        return Some(i.clone());
    }
    let severity = match c.get("severity").and_then(Value::as_str) {
        Some("warning") => Severity::Warning,
        _ => Severity::Error,
    };
    let expression = if k.1.is_empty() { None } else { compile(&k.1) };
    let inv = Arc::new(Invariant {
        key: k.0.clone(),
        rule: rule_number(&k.2),
        severity,
        human: k.2.clone(),
        guard: expression.as_ref().and_then(|e| e.focus_names()),
        expression,
        source_text: k.1.clone(),
        empty: OnceLock::new(),
    });
    cache.insert(k, inv.clone());
    Some(inv)
}

/// Splits an element id into (parent id, name, slice name).
fn split_id(id: &str) -> Option<(&str, &str, Option<&str>)> {
    let dot = id.rfind('.')?;
    let (parent, last) = (&id[..dot], &id[dot + 1..]);
    Some(match last.split_once(':') {
        Some((n, s)) => (parent, n, Some(s)),
        None => (parent, last, None),
    })
}

fn u32_of(v: Option<&Value>) -> Option<u32> {
    v.and_then(Value::as_u64)
        .map(|n| n.min(u32::MAX as u64) as u32)
}

fn max_of(v: Option<&Value>) -> Option<u32> {
    match v.and_then(Value::as_str) {
        Some("*") | None => None,
        Some(s) => s.parse().ok(),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Errors when compiling a StructureDefinition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError(pub String);

impl std::fmt::Display for ProfileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProfileError {}

impl Profile {
    pub(crate) fn compile(sd: &Value) -> Result<Profile, ProfileError> {
        if sd.get("resourceType").and_then(Value::as_str) != Some("StructureDefinition") {
            return Err(ProfileError("not a StructureDefinition".into()));
        }
        let url = sd
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| ProfileError("StructureDefinition.url missing".into()))?;
        let type_name = sd
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| ProfileError("StructureDefinition.type missing".into()))?;
        let raw = sd
            .pointer("/snapshot/element")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                ProfileError(format!("{url}: no snapshot (only snapshots are supported)"))
            })?;
        let mut elements = Vec::with_capacity(raw.len());
        let mut by_id = HashMap::with_capacity(raw.len());
        for (i, e) in raw.iter().enumerate() {
            let path = e
                .get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| ProfileError(format!("{url}: element #{i} has no path")))?;
            let slice_name = e.get("sliceName").and_then(Value::as_str);
            let id = match e.get("id").and_then(Value::as_str) {
                Some(id) => id.to_string(),
                None => match slice_name {
                    Some(s) => format!("{path}:{s}"),
                    None => path.to_string(),
                },
            };
            let max = max_of(e.get("max"));
            let types = e
                .get("type")
                .and_then(Value::as_array)
                .map(|ts| {
                    ts.iter()
                        .filter_map(|t| {
                            Some(ElemType {
                                code: t.get("code")?.as_str()?.to_string(),
                                profiles: strings(t.get("profile")),
                                target_profiles: strings(t.get("targetProfile")),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let (mut fixed, mut pattern) = (None, None);
            if let Some(o) = e.as_object() {
                for (k, v) in o {
                    if k.starts_with("fixed") {
                        fixed = Some(v.clone());
                    } else if k.starts_with("pattern") {
                        pattern = Some(v.clone());
                    }
                }
            }
            let slicing = e.get("slicing").map(|s| Slicing {
                discriminators: s
                    .get("discriminator")
                    .and_then(Value::as_array)
                    .map(|ds| {
                        ds.iter()
                            .filter_map(|d| {
                                let kind = match d.get("type")?.as_str()? {
                                    "value" => DiscKind::Value,
                                    "pattern" => DiscKind::Pattern,
                                    "type" => DiscKind::Type,
                                    "profile" => DiscKind::Profile,
                                    "exists" => DiscKind::Exists,
                                    _ => return None,
                                };
                                Some((kind, d.get("path")?.as_str()?.to_string()))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                ordered: s.get("ordered").and_then(Value::as_bool).unwrap_or(false),
                rules: s
                    .get("rules")
                    .and_then(Value::as_str)
                    .unwrap_or("open")
                    .to_string(),
            });
            let binding = e.get("binding").and_then(|b| {
                let strength = BindingStrength::from_code(b.get("strength")?.as_str()?)?;
                let vs = b.get("valueSet")?.as_str()?;
                let vs = vs.split_once('|').map_or(vs, |(u, _)| u);
                Some((strength, vs.to_string()))
            });
            let invariants = e
                .get("constraint")
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .filter(|c| !is_best_practice(c))
                        // ele-1 (no empty elements) is enforced by the structural check.
                        .filter(|c| c.get("key").and_then(Value::as_str) != Some("ele-1"))
                        .filter_map(invariant)
                        .collect()
                })
                .unwrap_or_default();
            by_id.insert(id.clone(), i);
            elements.push(Elem {
                id,
                path: path.to_string(),
                slice_name: slice_name.map(str::to_string),
                min: u32_of(e.get("min")).unwrap_or(0),
                max,
                types,
                fixed,
                pattern,
                slicing,
                binding,
                invariants,
                content_reference: e
                    .get("contentReference")
                    .and_then(Value::as_str)
                    .map(|s| s.trim_start_matches('#').to_string()),
                children: Vec::new(),
            });
        }
        // Attach every element to its parent: as a new group or as a slice of a group.
        for i in 1..elements.len() {
            let id = elements[i].id.clone();
            let Some((parent, name, slice)) = split_id(&id) else {
                continue;
            };
            let Some(&p) = by_id.get(parent) else {
                continue;
            };
            let name = name.to_string();
            let groups = &mut elements[p].children;
            match (groups.iter_mut().find(|g| g.name == name), slice) {
                (Some(g), Some(_)) => g.slices.push(i),
                (Some(_), None) => {}
                (None, None) => groups.push(ChildGroup::new(name, i)),
                // A slice without its base element (not in a valid snapshot): treat as the base.
                (None, Some(_)) => groups.push(ChildGroup::new(name, i)),
            }
        }
        for i in 0..elements.len() {
            let required: Vec<bool> = elements[i]
                .children
                .iter()
                .map(|g| {
                    elements[g.base].min >= 1 || g.slices.iter().any(|&s| elements[s].min >= 1)
                })
                .collect();
            for (g, r) in elements[i].children.iter_mut().zip(required) {
                g.required = r;
            }
        }
        Ok(Profile {
            url: url.to_string(),
            type_name: type_name.to_string(),
            kind: sd
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            elements,
            by_id,
        })
    }

    /// The element with a given id or path (for contentReference).
    pub(crate) fn by_id(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// The child group `name` of element `parent`.
    pub(crate) fn group(&self, parent: usize, name: &str) -> Option<&ChildGroup> {
        self.elements[parent]
            .children
            .iter()
            .find(|g| g.name == name)
    }

    /// Follows `contentReference` to the element whose children apply.
    pub(crate) fn resolve_content(&self, ei: usize) -> usize {
        match &self.elements[ei].content_reference {
            Some(r) => self.by_id(r).unwrap_or(ei),
            None => ei,
        }
    }
}
