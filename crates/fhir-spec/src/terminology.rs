//! The shipped terminology: R4 CodeSystems and ValueSets (and, on demand, the JP ones),
//! with value set expansion for `memberOf()` and binding checks.
//!
//! Expansion follows ValueSet.compose: `include`/`exclude` by enumerated concepts, whole code
//! systems, filters (`is-a`, `descendent-of`, `is-not-a`, `generalizes`, `=`, `in`, `exists`
//! on `concept`, `code` and concept properties) and imported value sets (intersection).
//! Systems whose content is not shipped (SNOMED CT, LOINC, UCUM, BCP-47…) or filters that
//! cannot be evaluated make the expansion *open* for that system: membership of a code of
//! that system is then unknown (`None`), never a false "no".

use serde_json::Value;
/// The maps are keyed by codes and canonical URLs from our own data: FNV instead of SipHash.
type HashMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<crate::hash::Fnv>>;
type HashSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<crate::hash::Fnv>>;
use std::sync::{Arc, LazyLock, RwLock};

/// One concept of a code system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concept {
    pub code: String,
    pub display: Option<String>,
    /// Designations: (language, value), e.g. ("ja", "男性").
    pub designations: Vec<(String, String)>,
    /// Concept properties as (code, value text).
    pub properties: Vec<(String, String)>,
    parents: Vec<u32>,
    children: Vec<u32>,
}

/// A CodeSystem resource, indexed.
#[derive(Debug, Clone)]
pub struct CodeSystemDef {
    pub url: String,
    pub version: Option<String>,
    /// CodeSystem.content: "complete", "fragment", "example", "not-present", "supplement".
    pub content: String,
    pub case_sensitive: bool,
    /// The implicit "all codes" value set (CodeSystem.valueSet).
    pub value_set: Option<String>,
    concepts: Vec<Concept>,
    index: HashMap<String, u32>,
}

impl CodeSystemDef {
    /// Parses a CodeSystem resource. `None` if it is not a CodeSystem with a url.
    pub fn from_json(v: &Value) -> Option<CodeSystemDef> {
        if v.get("resourceType")?.as_str()? != "CodeSystem" {
            return None;
        }
        let mut cs = CodeSystemDef {
            url: v.get("url")?.as_str()?.to_string(),
            version: str_field(v, "version"),
            content: str_field(v, "content").unwrap_or_else(|| "complete".into()),
            case_sensitive: v
                .get("caseSensitive")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            value_set: str_field(v, "valueSet"),
            concepts: Vec::new(),
            index: HashMap::default(),
        };
        if let Some(list) = v.get("concept").and_then(Value::as_array) {
            cs.add_concepts(list, None, 0);
        }
        // Hierarchies given by "parent"/"child" properties.
        let mut edges = Vec::new();
        for (i, c) in cs.concepts.iter().enumerate() {
            for (p, val) in &c.properties {
                match (p.as_str(), cs.index.get(val)) {
                    ("parent", Some(&parent)) => edges.push((parent, i as u32)),
                    ("child", Some(&child)) => edges.push((i as u32, child)),
                    _ => {}
                }
            }
        }
        for (parent, child) in edges {
            cs.link(parent, child);
        }
        Some(cs)
    }

    fn add_concepts(&mut self, list: &[Value], parent: Option<u32>, depth: usize) {
        if depth > 64 {
            return;
        }
        for c in list {
            let Some(code) = c.get("code").and_then(Value::as_str) else {
                continue;
            };
            let idx = self.concepts.len() as u32;
            let designations = c
                .get("designation")
                .and_then(Value::as_array)
                .map(|ds| {
                    ds.iter()
                        .filter_map(|d| {
                            Some((
                                str_field(d, "language").unwrap_or_default(),
                                d.get("value")?.as_str()?.to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let properties = c
                .get("property")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| {
                            Some((p.get("code")?.as_str()?.to_string(), property_value(p)?))
                        })
                        .collect()
                })
                .unwrap_or_default();
            self.concepts.push(Concept {
                code: code.to_string(),
                display: str_field(c, "display"),
                designations,
                properties,
                parents: Vec::new(),
                children: Vec::new(),
            });
            self.index.entry(code.to_string()).or_insert(idx);
            if let Some(p) = parent {
                self.link(p, idx);
            }
            if let Some(children) = c.get("concept").and_then(Value::as_array) {
                self.add_concepts(children, Some(idx), depth + 1);
            }
        }
    }

    fn link(&mut self, parent: u32, child: u32) {
        if parent == child {
            return;
        }
        if !self.concepts[parent as usize].children.contains(&child) {
            self.concepts[parent as usize].children.push(child);
            self.concepts[child as usize].parents.push(parent);
        }
    }

    /// True when every code of the system is in the resource.
    pub fn is_complete(&self) -> bool {
        self.content == "complete"
    }

    /// The concept with this code (case-insensitive when the system says so).
    pub fn concept(&self, code: &str) -> Option<&Concept> {
        let i = self.find(code)?;
        Some(&self.concepts[i as usize])
    }

    fn find(&self, code: &str) -> Option<u32> {
        if let Some(&i) = self.index.get(code) {
            return Some(i);
        }
        if !self.case_sensitive {
            return self
                .concepts
                .iter()
                .position(|c| c.code.eq_ignore_ascii_case(code))
                .map(|i| i as u32);
        }
        None
    }

    /// All concepts, in definition order.
    pub fn concepts(&self) -> &[Concept] {
        &self.concepts
    }

    /// `descendant` is `ancestor` or below it in the hierarchy.
    pub fn subsumes(&self, ancestor: &str, descendant: &str) -> Option<bool> {
        let a = self.find(ancestor)?;
        let d = self.find(descendant)?;
        Some(self.descendants(a, true).contains(&d))
    }

    fn descendants(&self, from: u32, include_self: bool) -> HashSet<u32> {
        let mut out = HashSet::default();
        let mut stack = vec![from];
        while let Some(c) = stack.pop() {
            if out.insert(c) {
                stack.extend(self.concepts[c as usize].children.iter().copied());
            }
        }
        if !include_self {
            out.remove(&from);
        }
        out
    }

    fn ancestors(&self, from: u32) -> HashSet<u32> {
        let mut out = HashSet::default();
        let mut stack = vec![from];
        while let Some(c) = stack.pop() {
            if out.insert(c) {
                stack.extend(self.concepts[c as usize].parents.iter().copied());
            }
        }
        out
    }
}

fn str_field(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

fn property_value(p: &Value) -> Option<String> {
    let m = p.as_object()?;
    m.iter()
        .find(|(k, _)| k.starts_with("value"))
        .map(|(_, v)| match v {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            other => other.to_string(),
        })
}

/// The result of expanding a value set.
#[derive(Debug, Clone, Default)]
pub struct Expansion {
    /// system → codes in the value set.
    codes: HashMap<String, HashSet<String>>,
    /// Systems (or "" for "any") whose membership could not be enumerated.
    open: HashSet<String>,
    /// Imports deeper than MAX_IMPORT_DEPTH were cut (such a result depends on where the
    /// expansion started, so it is not cached below the top level).
    truncated: bool,
}

impl Expansion {
    /// Whether `code` of `system` is in the value set: `Some(true/false)`, or `None` when the
    /// value set draws on content we do not ship for that system. Without a system
    /// (a plain `code` element), any system matches.
    pub fn contains(&self, system: Option<&str>, code: &str) -> Option<bool> {
        match system {
            Some(s) => {
                if self.codes.get(s).is_some_and(|c| c.contains(code)) {
                    Some(true)
                } else if self.open.contains(s) || self.open.contains("") {
                    None
                } else {
                    Some(false)
                }
            }
            None => {
                if self.codes.values().any(|c| c.contains(code)) {
                    Some(true)
                } else if self.open.is_empty() {
                    Some(false)
                } else {
                    None
                }
            }
        }
    }

    /// True when every code is known (no open system).
    pub fn is_complete(&self) -> bool {
        self.open.is_empty()
    }

    /// The enumerated (system, code) pairs, sorted.
    pub fn codes(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> = self
            .codes
            .iter()
            .flat_map(|(s, cs)| cs.iter().map(move |c| (s.as_str(), c.as_str())))
            .collect();
        v.sort_unstable();
        v
    }

    /// Number of enumerated codes.
    pub fn len(&self) -> usize {
        self.codes.values().map(HashSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn intersect(&mut self, other: &Expansion) {
        self.truncated |= other.truncated;
        let mut keep: HashMap<String, HashSet<String>> = HashMap::default();
        for (s, cs) in &self.codes {
            for c in cs {
                let inside = other.codes.get(s).is_some_and(|o| o.contains(c));
                if inside || other.open.contains(s) || other.open.contains("") {
                    keep.entry(s.clone()).or_default().insert(c.clone());
                }
            }
        }
        // Codes only the other side enumerates survive where our side is open.
        for (s, cs) in &other.codes {
            if self.open.contains(s) || self.open.contains("") {
                keep.entry(s.clone())
                    .or_default()
                    .extend(cs.iter().cloned());
            }
        }
        self.codes = keep;
        self.open = self
            .open
            .iter()
            .filter(|s| other.open.contains(*s) || other.open.contains(""))
            .cloned()
            .collect();
    }

    fn union(&mut self, other: Expansion) {
        self.truncated |= other.truncated;
        for (s, cs) in other.codes {
            self.codes.entry(s).or_default().extend(cs);
        }
        self.open.extend(other.open);
    }

    fn subtract(&mut self, other: &Expansion) {
        self.truncated |= other.truncated;
        for (s, cs) in self.codes.iter_mut() {
            if let Some(o) = other.codes.get(s) {
                cs.retain(|c| !o.contains(c));
            }
        }
        // An open exclusion makes the remaining codes of that system uncertain.
        for s in &other.open {
            if self.codes.remove(s).is_some() || s.is_empty() {
                self.open.insert(s.clone());
            }
        }
    }
}

/// CodeSystems and ValueSets by canonical URL, with cached expansions.
pub struct Terminology {
    code_systems: HashMap<String, Arc<CodeSystemDef>>,
    value_sets: HashMap<String, Arc<Value>>,
    /// Expansions by value set URL; `None` = not a known value set (also remembered: finding
    /// that out scans every code system for an implicit value set).
    cache: RwLock<HashMap<String, Option<Arc<Expansion>>>>,
}

impl std::fmt::Debug for Terminology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminology")
            .field("code_systems", &self.code_systems.len())
            .field("value_sets", &self.value_sets.len())
            .finish()
    }
}

static R4_TERMINOLOGY: LazyLock<Terminology> =
    LazyLock::new(|| Terminology::from_owned(crate::r4_value_sets()));

static R4_JP_TERMINOLOGY: LazyLock<Terminology> = LazyLock::new(|| {
    let jp: Vec<Value> = crate::jp_resources_where(|f| {
        f.resource_type == "ValueSet" || f.resource_type == "CodeSystem"
    })
    .into_iter()
    .map(|(_, _, v)| v)
    .collect();
    let mut t = R4_TERMINOLOGY.with_resources(&[]);
    t.add_owned(jp);
    t
});

fn strip_version(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

const MAX_IMPORT_DEPTH: usize = 16;

impl Terminology {
    /// The R4 CodeSystems and ValueSets, built once on first use.
    pub fn r4() -> &'static Terminology {
        &R4_TERMINOLOGY
    }

    /// R4 plus the JP Core / JP-CLINS / eCheckupReport CodeSystems and ValueSets, built once.
    pub fn r4_jp() -> &'static Terminology {
        &R4_JP_TERMINOLOGY
    }

    /// Indexes CodeSystem and ValueSet resources (other resources are ignored).
    pub fn from_resources(resources: &[Value]) -> Terminology {
        let mut t = Terminology {
            code_systems: HashMap::default(),
            value_sets: HashMap::default(),
            cache: RwLock::new(HashMap::default()),
        };
        t.add(resources);
        t
    }

    /// Like [`Terminology::from_resources`], taking ownership (no copies).
    pub fn from_owned(resources: Vec<Value>) -> Terminology {
        let mut t = Terminology::from_resources(&[]);
        t.add_owned(resources);
        t
    }

    /// A copy with more resources; a later resource with the same URL replaces an earlier one.
    pub fn with_resources(&self, resources: &[Value]) -> Terminology {
        let mut t = Terminology {
            code_systems: self.code_systems.clone(),
            value_sets: self.value_sets.clone(),
            cache: RwLock::new(HashMap::default()),
        };
        t.add(resources);
        t
    }

    fn add_owned(&mut self, resources: Vec<Value>) {
        for r in resources {
            if r.get("resourceType").and_then(Value::as_str) == Some("ValueSet") {
                if let Some(url) = r.get("url").and_then(Value::as_str).map(str::to_string) {
                    self.value_sets.insert(url, Arc::new(r));
                }
            } else {
                self.add(std::slice::from_ref(&r));
            }
        }
    }

    fn add(&mut self, resources: &[Value]) {
        for r in resources {
            match r.get("resourceType").and_then(Value::as_str) {
                Some("CodeSystem") => {
                    if let Some(cs) = CodeSystemDef::from_json(r) {
                        self.code_systems.insert(cs.url.clone(), Arc::new(cs));
                    }
                }
                Some("ValueSet") => {
                    if let Some(url) = r.get("url").and_then(Value::as_str) {
                        self.value_sets.insert(url.to_string(), Arc::new(r.clone()));
                    }
                }
                _ => {}
            }
        }
    }

    /// The code system with this canonical URL (`|version` ignored).
    pub fn code_system(&self, url: &str) -> Option<&CodeSystemDef> {
        self.code_systems.get(strip_version(url)).map(|a| &**a)
    }

    /// The ValueSet resource with this canonical URL (`|version` ignored).
    pub fn value_set(&self, url: &str) -> Option<&Value> {
        self.value_sets.get(strip_version(url)).map(|a| &**a)
    }

    /// The display of a code, if the system is shipped and defines one.
    pub fn display(&self, system: &str, code: &str) -> Option<&str> {
        self.code_system(system)?.concept(code)?.display.as_deref()
    }

    /// Whether `code` (optionally of `system`) is in the value set: `None` when the value set
    /// is unknown or membership cannot be decided with the shipped content.
    pub fn validate_code(&self, value_set: &str, system: Option<&str>, code: &str) -> Option<bool> {
        self.expand(value_set)?.contains(system, code)
    }

    /// `ancestor` subsumes `descendant` in `system` (None if unknown).
    pub fn subsumes(&self, system: &str, ancestor: &str, descendant: &str) -> Option<bool> {
        self.code_system(system)?.subsumes(ancestor, descendant)
    }

    /// Expands a value set (cached). `None` when the value set is not known. A code system's
    /// implicit value set (CodeSystem.valueSet) is known too.
    pub fn expand(&self, url: &str) -> Option<Arc<Expansion>> {
        self.expand_at(strip_version(url), 0)
    }

    /// Cached expansion at import depth `depth` (every value set is computed once, so
    /// diamond-shaped imports cannot blow up).
    fn expand_at(&self, url: &str, depth: usize) -> Option<Arc<Expansion>> {
        if let Some(e) = self.cache.read().ok().and_then(|c| c.get(url).cloned()) {
            return e;
        }
        let e = self.expand_uncached(url, depth).map(Arc::new);
        if depth == 0 || !e.as_ref().is_some_and(|e| e.truncated) {
            if let Ok(mut c) = self.cache.write() {
                c.insert(url.to_string(), e.clone());
            }
        }
        e
    }

    fn expand_uncached(&self, url: &str, depth: usize) -> Option<Expansion> {
        if depth > MAX_IMPORT_DEPTH {
            let mut e = Expansion::default();
            e.open.insert(String::new());
            e.truncated = true;
            return Some(e);
        }
        let Some(vs) = self.value_set(url) else {
            // Implicit value set of a code system.
            let cs = self
                .code_systems
                .values()
                .find(|cs| cs.value_set.as_deref() == Some(url))?;
            return Some(self.whole_system(&cs.url));
        };
        if let Some(compose) = vs.get("compose") {
            let mut out = Expansion::default();
            for inc in compose
                .get("include")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.union(self.include(inc, depth));
            }
            for exc in compose
                .get("exclude")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.subtract(&self.include(exc, depth));
            }
            return Some(out);
        }
        let mut out = Expansion::default();
        match vs.pointer("/expansion/contains").and_then(Value::as_array) {
            Some(list) => add_contains(&mut out, list, 0),
            None => {
                out.open.insert(String::new());
            }
        }
        Some(out)
    }

    fn whole_system(&self, system: &str) -> Expansion {
        let mut e = Expansion::default();
        match self.code_system(system) {
            Some(cs) => {
                let set = e.codes.entry(system.to_string()).or_default();
                set.extend(cs.concepts.iter().map(|c| c.code.clone()));
                if !cs.is_complete() {
                    e.open.insert(system.to_string());
                }
            }
            None => {
                e.open.insert(system.to_string());
            }
        }
        e
    }

    /// One compose.include (or exclude) entry.
    fn include(&self, inc: &Value, depth: usize) -> Expansion {
        let system = inc.get("system").and_then(Value::as_str);
        let mut part: Option<Expansion> = system.map(|system| {
            if let Some(list) = inc.get("concept").and_then(Value::as_array) {
                let mut e = Expansion::default();
                let set = e.codes.entry(system.to_string()).or_default();
                for c in list {
                    if let Some(code) = c.get("code").and_then(Value::as_str) {
                        set.insert(code.to_string());
                    }
                }
                e
            } else if let Some(filters) = inc.get("filter").and_then(Value::as_array) {
                self.filtered(system, filters)
            } else {
                self.whole_system(system)
            }
        });
        for vs in inc
            .get("valueSet")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let imported = match vs
                .as_str()
                .and_then(|u| self.expand_at(strip_version(u), depth + 1))
            {
                Some(e) => (*e).clone(),
                None => {
                    let mut e = Expansion::default();
                    e.open.insert(String::new());
                    e
                }
            };
            match &mut part {
                Some(p) => p.intersect(&imported),
                None => part = Some(imported),
            }
        }
        part.unwrap_or_default()
    }

    fn filtered(&self, system: &str, filters: &[Value]) -> Expansion {
        let open = || {
            let mut e = Expansion::default();
            e.open.insert(system.to_string());
            e
        };
        let Some(cs) = self.code_system(system) else {
            return open();
        };
        let mut selected: HashSet<u32> = (0..cs.concepts.len() as u32).collect();
        for f in filters {
            let property = f.get("property").and_then(Value::as_str).unwrap_or("");
            let op = f.get("op").and_then(Value::as_str).unwrap_or("");
            let value = f.get("value").and_then(Value::as_str).unwrap_or("");
            let matched: HashSet<u32> = match (property, op) {
                ("concept" | "code", "is-a") => match cs.find(value) {
                    Some(c) => cs.descendants(c, true),
                    None => HashSet::default(),
                },
                ("concept" | "code", "descendent-of") => match cs.find(value) {
                    Some(c) => cs.descendants(c, false),
                    None => HashSet::default(),
                },
                ("concept" | "code", "is-not-a") => {
                    let below = cs
                        .find(value)
                        .map(|c| cs.descendants(c, true))
                        .unwrap_or_default();
                    (0..cs.concepts.len() as u32)
                        .filter(|i| !below.contains(i))
                        .collect()
                }
                ("concept" | "code", "generalizes") => {
                    cs.find(value).map(|c| cs.ancestors(c)).unwrap_or_default()
                }
                ("concept" | "code", "=") => cs.find(value).into_iter().collect(),
                ("concept" | "code", "in") => {
                    value.split(',').filter_map(|v| cs.find(v.trim())).collect()
                }
                (p, "=") => props_matching(cs, p, |v| v == value),
                (p, "in") => {
                    let vals: Vec<&str> = value.split(',').map(str::trim).collect();
                    props_matching(cs, p, |v| vals.contains(&v))
                }
                (p, "exists") => {
                    let want = value != "false";
                    (0..cs.concepts.len() as u32)
                        .filter(|&i| {
                            cs.concepts[i as usize]
                                .properties
                                .iter()
                                .any(|(k, _)| k == p)
                                == want
                        })
                        .collect()
                }
                _ => return open(),
            };
            selected.retain(|i| matched.contains(i));
        }
        let mut e = Expansion::default();
        e.codes.insert(
            system.to_string(),
            selected
                .into_iter()
                .map(|i| cs.concepts[i as usize].code.clone())
                .collect(),
        );
        if !cs.is_complete() {
            e.open.insert(system.to_string());
        }
        e
    }
}

fn props_matching(cs: &CodeSystemDef, property: &str, pred: impl Fn(&str) -> bool) -> HashSet<u32> {
    (0..cs.concepts.len() as u32)
        .filter(|&i| {
            cs.concepts[i as usize]
                .properties
                .iter()
                .any(|(k, v)| k == property && pred(v))
        })
        .collect()
}

fn add_contains(out: &mut Expansion, list: &[Value], depth: usize) {
    if depth > 64 {
        return;
    }
    for c in list {
        if let (Some(s), Some(code)) = (
            c.get("system").and_then(Value::as_str),
            c.get("code").and_then(Value::as_str),
        ) {
            out.codes
                .entry(s.to_string())
                .or_default()
                .insert(code.to_string());
        }
        if let Some(children) = c.get("contains").and_then(Value::as_array) {
            add_contains(out, children, depth + 1);
        }
    }
}
