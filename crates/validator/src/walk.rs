//! The instance walker: follows a resource and a compiled profile side by side.
//!
//! Nothing is formatted on the success path: locations are a chain of segments on the stack
//! ([`Loc`]), rendered only when an issue is reported; cardinality and other messages are
//! built only on failure. Slices are matched through a per-group index built once per
//! profile ([`SliceIndex`]): value/pattern discriminators with string values (system,
//! display, url, …) are looked up in a hash map instead of testing every slice.

use crate::messages;
use crate::profile::{ChildGroup, DiscKind, Elem, Invariant, Profile, Verdict};
use crate::{strip_version, ValidationIssue, Validator};
use iryo_fhir_spec::{BindingStrength, FastMap, Severity};
use iryo_fhirpath::{Context, Item};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

/// Nested resources deeper than this are not followed.
const MAX_DEPTH: usize = 24;
/// At most this many issues are reported.
const MAX_ISSUES: usize = 1000;

static NULL: Value = Value::Null;

/// One segment of an instance location.
#[derive(Clone, Copy)]
pub(crate) enum Seg<'a> {
    /// The start: a resource type (`Bundle`) or an already rendered location.
    Root(&'a str),
    /// `.name`
    Name(&'a str),
    /// `[i]`
    Index(usize),
    /// `.name.ofType(Type)`
    Choice(&'a str, &'a str),
}

/// A FHIRPath location as a chain of segments on the stack, rendered only for issues.
#[derive(Clone, Copy)]
pub(crate) struct Loc<'a> {
    parent: Option<&'a Loc<'a>>,
    seg: Seg<'a>,
}

impl<'a> Loc<'a> {
    pub(crate) fn root(s: &'a str) -> Loc<'a> {
        Loc {
            parent: None,
            seg: Seg::Root(s),
        }
    }

    fn child<'b>(&'b self, seg: Seg<'b>) -> Loc<'b> {
        Loc {
            parent: Some(self),
            seg,
        }
    }

    pub(crate) fn render(&self) -> String {
        let mut segs = Vec::with_capacity(8);
        let mut cur = Some(self);
        while let Some(l) = cur {
            segs.push(l.seg);
            cur = l.parent;
        }
        let mut s = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Seg::Root(r) => s.push_str(r),
                Seg::Name(n) => {
                    s.push('.');
                    s.push_str(n);
                }
                Seg::Index(i) => {
                    let _ = write!(s, "[{i}]");
                }
                Seg::Choice(n, t) => {
                    let _ = write!(s, ".{n}.ofType({t})");
                }
            }
        }
        s
    }
}

/// The profile side of a discriminator: `None` = the slice's own profile.
pub(crate) enum Target {
    /// The path leads nowhere in the slice's definition: the slice cannot match.
    Missing,
    /// `url` of an extension slice: the extension's canonical URL.
    ExtUrl(Option<String>),
    /// The element at the path (profile, index) and whether the path went through `resolve()`.
    Elem(Option<Arc<Profile>>, usize, bool),
}

/// How the slices of one sliced element are matched, built once per profile and group.
pub(crate) struct SliceIndex {
    /// The discriminators in effect (declared, or implied for choice elements and extensions).
    discs: Vec<(DiscKind, String)>,
    /// Instance-side path segments per discriminator (`$this` removed).
    segs: Vec<Vec<String>>,
    /// Per slice (position in the group), per discriminator.
    targets: Vec<Vec<Target>>,
    /// Every discriminator path is plain element names (no function).
    plain: bool,
    /// Key of the expected string values (one per discriminator) → first slice with them.
    map: FastMap<String, usize>,
    /// Slices that are not in `map` and may match: tested one by one.
    rest: Vec<usize>,
}

/// The values at a plain discriminator path: none, exactly one, or several.
enum Pv<'v> {
    None,
    One(&'v Value),
    Many,
}

fn key_part(key: &mut String, s: &str) {
    let _ = write!(key, "{}:", s.len());
    key.push_str(s);
}

/// The values under one element name (most often one or two: kept on the stack).
type Vals<'p, 'v> = smallvec::SmallVec<[Val<'p, 'v>; 4]>;

/// One instance value under an element name.
struct Val<'p, 'v> {
    value: &'v Value,
    type_code: &'p str,
    seg: Seg<'p>,
    index: Option<usize>,
}

pub(crate) struct Walk<'a, 'v> {
    v: &'a Validator,
    root: &'v Value,
    issues: Vec<ValidationIssue>,
    /// Bundle entries by fullUrl (when the root is a Bundle).
    full_urls: Arc<FastMap<&'v str, &'v Value>>,
    depth: usize,
    pub only_base: bool,
    /// `%rootResource` for invariants: the container of a contained resource, else the
    /// resource itself.
    cur_root: &'v Value,
    /// How many leading issues come from the structural check.
    structural: usize,
}

/// `resolve()` inside a Bundle: entries by fullUrl.
struct BundleResolver<'m, 'v>(&'m FastMap<&'v str, &'v Value>);

impl iryo_fhirpath::Resolver for BundleResolver<'_, '_> {
    fn resolve(&self, reference: &str) -> Option<&Value> {
        self.0.get(reference).copied()
    }
}

fn is_primitive(t: &str) -> bool {
    t.starts_with(|c: char| c.is_ascii_lowercase()) || t.starts_with("http://hl7.org/fhirpath/")
}

fn type_name_of(code: &str) -> &str {
    match code {
        c if c.starts_with("http://hl7.org/fhirpath/System.") => "string",
        c => c,
    }
}

use iryo_fhirpath::model::PRIMITIVES;

/// `Quantity` for `valueQuantity` with prefix `value`, if the suffix names a type.
pub(crate) fn choice_type<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    let suffix = key.strip_prefix(prefix)?;
    let first = suffix.as_bytes().first()?;
    if !first.is_ascii_uppercase() {
        return None;
    }
    let m = iryo_fhir_spec::r4();
    if m.type_def(suffix).is_some() {
        return Some(suffix);
    }
    let lower = first.to_ascii_lowercase();
    PRIMITIVES
        .iter()
        .find(|p| p.as_bytes()[0] == lower && p[1..] == suffix[1..])
        .filter(|p| m.type_def(p).is_some())
        .copied()
}

/// Object member lookup; small objects are scanned (cheaper than hashing the key).
#[inline]
fn get_key<'v>(obj: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    if obj.len() <= 32 {
        obj.iter().find(|(k, _)| k.as_str() == name).map(|(_, v)| v)
    } else {
        obj.get(name)
    }
}

/// A member of a JSON object (`None` for other values).
#[inline]
fn field<'v>(v: &'v Value, name: &str) -> Option<&'v Value> {
    match v {
        Value::Object(o) => get_key(o, name),
        _ => None,
    }
}

/// The `_name` sibling of `name`.
#[inline]
fn get_underscore<'v>(obj: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    obj.iter()
        .find(|(k, _)| k.len() == name.len() + 1 && k.starts_with('_') && &k[1..] == name)
        .map(|(_, v)| v)
}

fn num_eq(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    a == b || (a.as_f64().is_some() && a.as_f64() == b.as_f64())
}

/// `fixed[x]`: exact equality (numbers by value).
pub(crate) fn fixed_equals(v: &Value, f: &Value) -> bool {
    match (v, f) {
        (Value::Number(a), Value::Number(b)) => num_eq(a, b),
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && b.iter()
                    .all(|(k, fv)| a.get(k).is_some_and(|av| fixed_equals(av, fv)))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fixed_equals(x, y))
        }
        _ => v == f,
    }
}

/// `pattern[x]`: every part of the pattern is present in the value.
pub(crate) fn pattern_matches(v: &Value, p: &Value) -> bool {
    match (v, p) {
        (Value::Number(a), Value::Number(b)) => num_eq(a, b),
        (Value::Object(a), Value::Object(b)) => b
            .iter()
            .all(|(k, pv)| a.get(k).is_some_and(|av| pattern_matches(av, pv))),
        (Value::Array(a), Value::Array(b)) => b
            .iter()
            .all(|pi| a.iter().any(|ai| pattern_matches(ai, pi))),
        (v, Value::Array(b)) if b.len() == 1 => pattern_matches(v, &b[0]),
        _ => v == p,
    }
}

fn quote(v: &Value) -> String {
    let mut s = v.to_string();
    if s.chars().count() > 80 {
        s = s.chars().take(80).collect::<String>() + "…";
    }
    s
}

/// Splits a discriminator path at dots outside parentheses and quotes.
fn split_path(p: &str) -> Vec<&str> {
    let (mut out, mut depth, mut quoted, mut start) = (Vec::new(), 0i32, false, 0);
    for (i, c) in p.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            '.' if !quoted && depth == 0 => {
                out.push(&p[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&p[start..]);
    out
}

fn quoted_arg<'p>(seg: &'p str, func: &str) -> Option<&'p str> {
    let inner = seg
        .strip_prefix(func)?
        .strip_prefix('(')?
        .strip_suffix(')')?;
    Some(inner.trim().trim_matches('\''))
}

struct TermAdapter(&'static iryo_fhir_spec::Terminology);

impl iryo_fhirpath::Terminology for TermAdapter {
    fn member_of(&self, item: &Item<'_>, value_set: &str) -> Option<bool> {
        let codes = codes_of(item.as_node().unwrap_or(&NULL), item.type_name());
        let codes = if codes.is_empty() {
            match item.as_str() {
                Some(s) => vec![(None, s.to_string())],
                None => return None,
            }
        } else {
            codes
        };
        let mut unknown = false;
        for (s, c) in &codes {
            match self.0.validate_code(value_set, s.as_deref(), c) {
                Some(true) => return Some(true),
                None => unknown = true,
                Some(false) => {}
            }
        }
        if unknown {
            None
        } else {
            Some(false)
        }
    }
}

/// (system, code) pairs of a coded value of the given type.
fn codes_of(v: &Value, type_code: &str) -> Vec<(Option<String>, String)> {
    let pair = |o: &Value| {
        o.get("code").and_then(Value::as_str).map(|c| {
            (
                o.get("system").and_then(Value::as_str).map(str::to_string),
                c.to_string(),
            )
        })
    };
    match v {
        Value::String(s) if is_primitive(type_code) => vec![(None, s.clone())],
        Value::Object(o) if o.contains_key("coding") || type_code == "CodeableConcept" => o
            .get("coding")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(pair).collect())
            .unwrap_or_default(),
        Value::Object(_) => pair(v).into_iter().collect(),
        _ => Vec::new(),
    }
}

impl<'a, 'v> Walk<'a, 'v> {
    pub(crate) fn new(v: &'a Validator, root: &'v Value) -> Self {
        let mut full_urls = FastMap::default();
        if field(root, "resourceType").and_then(Value::as_str) == Some("Bundle") {
            for e in root
                .get("entry")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let (Some(u), Some(r)) = (
                    field(e, "fullUrl").and_then(Value::as_str),
                    field(e, "resource"),
                ) {
                    full_urls.insert(u, r);
                }
            }
        }
        Self::with_urls(v, root, Arc::new(full_urls))
    }

    fn with_urls(
        v: &'a Validator,
        root: &'v Value,
        full_urls: Arc<FastMap<&'v str, &'v Value>>,
    ) -> Self {
        Walk {
            v,
            root,
            issues: Vec::new(),
            full_urls,
            depth: 0,
            only_base: false,
            cur_root: root,
            structural: 0,
        }
    }

    pub(crate) fn run(&mut self, profiles: &[&str]) {
        let root = self.root;
        for i in iryo_fhir_spec::r4().check_structure(root) {
            self.issues.push(ValidationIssue {
                severity: i.severity,
                code: i.code,
                expression: i.expression,
                key: None,
                message_ja: i.message_ja,
                message_en: i.message_en,
            });
        }
        self.structural = self.issues.len();
        let Some(rt) = field(root, "resourceType").and_then(Value::as_str) else {
            return;
        };
        if !iryo_fhir_spec::r4().is_resource_type(rt) {
            return;
        }
        self.resource(root, profiles, !profiles.is_empty(), &Loc::root(rt), None);
    }

    pub(crate) fn finish(mut self) -> Vec<ValidationIssue> {
        // Same problem reported by two profiles (or by the structural check and a profile): once.
        // A missing element found by the structural check is not reported again by a profile
        // (slice cardinality, which names the slice `path:slice`, still is).
        let structural: std::collections::HashSet<String> = self.issues[..self.structural]
            .iter()
            .filter(|i| i.code == "required")
            .map(|i| i.expression.clone())
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut index = 0usize;
        self.issues.retain(|i| {
            index += 1;
            if index > self.structural
                && i.code == "required"
                && structural.contains(&i.expression)
                && !i
                    .message_en
                    .split(": minimum")
                    .next()
                    .unwrap_or("")
                    .contains(':')
            {
                return false;
            }
            seen.insert((
                i.expression.clone(),
                i.code,
                i.key.clone(),
                i.message_en.clone(),
            ))
        });
        self.issues
    }

    fn push(
        &mut self,
        severity: Severity,
        code: &'static str,
        expression: String,
        ja: String,
        en: String,
    ) {
        self.push_key(severity, code, expression, None, ja, en);
    }

    fn push_key(
        &mut self,
        severity: Severity,
        code: &'static str,
        expression: String,
        key: Option<String>,
        ja: String,
        en: String,
    ) {
        if self.issues.len() >= MAX_ISSUES {
            return;
        }
        let too_many = self.issues.len() + 1 == MAX_ISSUES;
        let last = too_many.then(|| expression.clone());
        self.issues.push(ValidationIssue {
            severity,
            code,
            expression,
            key,
            message_ja: ja,
            message_en: en,
        });
        if let Some(expression) = last {
            self.issues.push(ValidationIssue {
                severity: Severity::Error,
                code: "too-costly",
                expression,
                key: None,
                message_ja: format!("問題が多すぎるため、{MAX_ISSUES} 件で打ち切りました"),
                message_en: format!("Too many issues; stopped after {MAX_ISSUES}"),
            });
        }
    }

    /// Validates a (possibly nested) resource against profiles: `explicit` ones (requested,
    /// or from the element type) plus its own `meta.profile` unless `only_explicit`.
    fn resource(
        &mut self,
        res: &'v Value,
        explicit: &[&str],
        only_explicit: bool,
        loc: &Loc<'_>,
        container: Option<&'v Value>,
    ) {
        let Some(rt) = field(res, "resourceType").and_then(Value::as_str) else {
            return;
        };
        if self.depth > MAX_DEPTH {
            return;
        }
        let mut urls: Vec<&str> = explicit.to_vec();
        if !only_explicit && !self.only_base {
            for p in res
                .get("meta")
                .and_then(|m| field(m, "profile"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !urls.iter().any(|u| strip_version(u) == strip_version(p)) {
                    urls.push(p);
                }
            }
        }
        let mut profiles: Vec<Arc<Profile>> = Vec::new();
        for u in &urls {
            match self.v.profile(u) {
                Some(p)
                    if p.type_name == rt || (p.kind == "resource" && p.type_name == "Resource") =>
                {
                    if !profiles.iter().any(|q| q.url == p.url) {
                        profiles.push(p)
                    }
                }
                Some(p) => self.push(
                    Severity::Error,
                    "invalid",
                    loc.render(),
                    format!(
                        "プロファイル {u} は {} 用であり、{rt} には適用できません",
                        p.type_name
                    ),
                    format!("Profile {u} is for {}, not for {rt}", p.type_name),
                ),
                None => self.push(
                    Severity::Warning,
                    "not-found",
                    loc.render(),
                    format!("プロファイル {u} が不明なため、このプロファイルでは検証していません"),
                    format!("Profile {u} is unknown, so the resource was not checked against it"),
                ),
            }
        }
        if profiles.is_empty() {
            match self.v.base_profile(rt) {
                Some(p) => profiles.push(p),
                None => return,
            }
        }
        self.depth += 1;
        let saved = std::mem::replace(&mut self.cur_root, container.unwrap_or(res));
        for p in profiles {
            self.element(&p, 0, res, rt, loc, res);
        }
        self.cur_root = saved;
        self.depth -= 1;
    }

    /// Checks one instance value against element `ei` of `prof`.
    fn element(
        &mut self,
        prof: &Arc<Profile>,
        ei: usize,
        val: &'v Value,
        type_code: &str,
        loc: &Loc<'_>,
        resource: &'v Value,
    ) {
        let e = &prof.elements[ei];
        if val.is_null() {
            return;
        }
        if let Some(f) = &e.fixed {
            if !fixed_equals(val, f) {
                self.push(
                    Severity::Error,
                    "value",
                    loc.render(),
                    format!(
                        "値は固定値 {} でなければなりません（実際: {}）",
                        quote(f),
                        quote(val)
                    ),
                    format!(
                        "Value must be the fixed value {} (found {})",
                        quote(f),
                        quote(val)
                    ),
                );
            }
        }
        if let Some(p) = &e.pattern {
            if !pattern_matches(val, p) {
                self.push(
                    Severity::Error,
                    "value",
                    loc.render(),
                    format!(
                        "値がパターン {} に一致しません（実際: {}）",
                        quote(p),
                        quote(val)
                    ),
                    format!(
                        "Value does not match the pattern {} (found {})",
                        quote(p),
                        quote(val)
                    ),
                );
            }
        }
        if let Some((strength, vs)) = &e.binding {
            self.binding(*strength, vs, val, type_code, loc);
        }
        if type_code == "Coding" {
            self.coding(val, loc);
        }
        if type_code == "Reference" {
            self.reference(e, val, loc);
        }
        if !is_primitive(type_code) && !e.invariants.is_empty() {
            self.invariants(e, val, type_code, ei == 0, loc, resource);
        }
        let Value::Object(obj) = val else {
            return;
        };
        // A nested resource (contained, Bundle.entry.resource, Parameters.parameter.resource).
        if ei != 0 && get_key(obj, "resourceType").is_some() {
            let explicit: Vec<&str> = e
                .types
                .iter()
                .flat_map(|t| t.profiles.iter().map(String::as_str))
                .collect();
            let container = e.path.ends_with(".contained").then_some(resource);
            self.resource(val, &explicit, false, loc, container);
            return;
        }
        let ce = prof.resolve_content(ei);
        if ei == 0 || !prof.elements[ce].children.is_empty() {
            self.children(prof, ce, obj, loc, resource);
            return;
        }
        // Not unrolled in this profile: follow the type's own definition.
        let tp = e
            .types
            .iter()
            .find(|t| type_name_of(&t.code) == type_code)
            .and_then(|t| t.profiles.first())
            .and_then(|u| self.v.profile(u))
            .or_else(|| {
                if type_code == "BackboneElement" || type_code == "Element" {
                    None
                } else {
                    self.v.base_profile(type_code)
                }
            });
        if let Some(tp) = tp {
            self.element(&tp, 0, val, type_code, loc, resource);
        }
    }

    /// Walks the children of element `pe` over the object's keys.
    fn children(
        &mut self,
        prof: &Arc<Profile>,
        pe: usize,
        obj: &'v Map<String, Value>,
        loc: &Loc<'_>,
        resource: &'v Value,
    ) {
        let mask = crate::profile::key_mask(obj);
        for g in &prof.elements[pe].children {
            if g.bit != 0 && mask & g.bit == 0 && !g.required {
                // No value and nothing required: nothing to check.
                continue;
            }
            let base = &prof.elements[g.base];
            let mut vals = Vals::new();
            self.collect(base, g, obj, loc, &mut vals);
            let shown = loc.child(Seg::Name(&g.shown));
            self.cardinality(base, None, vals.len(), &shown);
            if g.slices.is_empty() {
                for x in &vals {
                    at(loc, x, |l| {
                        self.element(prof, g.base, x.value, x.type_code, l, resource)
                    });
                }
                continue;
            }
            if vals.is_empty() {
                for &s in &g.slices {
                    let se = &prof.elements[s];
                    self.cardinality(se, se.slice_name.as_deref(), 0, &shown);
                }
                continue;
            }
            let idx = g.index.get_or_init(|| self.slice_index(prof, g));
            let matched: Vec<Option<usize>> = vals
                .iter()
                .map(|x| self.match_slice(prof, idx, x))
                .collect();
            for (si, &s) in g.slices.iter().enumerate() {
                let n = matched.iter().filter(|m| **m == Some(si)).count();
                let se = &prof.elements[s];
                self.cardinality(se, se.slice_name.as_deref(), n, &shown);
            }
            let slicing = base.slicing.as_ref();
            let rules = slicing.map_or("open", |s| s.rules.as_str());
            if rules == "closed" {
                for (x, m) in vals.iter().zip(&matched) {
                    if m.is_none() {
                        let l = val_loc(loc, x);
                        self.push(
                            Severity::Error,
                            "structure",
                            l,
                            format!(
                                "{} のスライス定義（closed）のいずれにも一致しません",
                                base.path
                            ),
                            format!(
                                "Does not match any slice of {} (slicing is closed)",
                                base.path
                            ),
                        );
                    }
                }
            }
            if slicing.is_some_and(|s| s.ordered) || rules == "openAtEnd" {
                let ordered = slicing.is_some_and(|s| s.ordered);
                let mut last = 0usize;
                let mut seen_unmatched = false;
                for (x, m) in vals.iter().zip(&matched) {
                    match m {
                        Some(i) => {
                            if (ordered && *i < last) || (rules == "openAtEnd" && seen_unmatched) {
                                self.push(
                                    Severity::Error,
                                    "structure",
                                    val_loc(loc, x),
                                    format!("{} のスライスの順序が定義と異なります", base.path),
                                    format!(
                                        "The slices of {} are not in the defined order",
                                        base.path
                                    ),
                                );
                                break;
                            }
                            last = *i;
                        }
                        None => seen_unmatched = true,
                    }
                }
            }
            for (x, m) in vals.iter().zip(&matched) {
                at(loc, x, |l| match m {
                    Some(i) => self.element(prof, g.slices[*i], x.value, x.type_code, l, resource),
                    None if g.name == "extension" || g.name == "modifierExtension" => {
                        self.unsliced_extension(x.value, l, resource)
                    }
                    None => self.element(prof, g.base, x.value, x.type_code, l, resource),
                });
            }
        }
    }

    /// An extension that matches no slice: checked against its own definition when known.
    fn unsliced_extension(&mut self, value: &'v Value, loc: &Loc<'_>, resource: &'v Value) {
        let Some(url) = field(value, "url").and_then(Value::as_str) else {
            return;
        };
        match self.v.profile(url) {
            Some(p) if p.type_name == "Extension" => {
                self.element(&p, 0, value, "Extension", loc, resource)
            }
            _ => {
                if let Some(base) = self.v.base_profile("Extension") {
                    self.element(&base, 0, value, "Extension", loc, resource);
                }
                self.push(
                    Severity::Warning,
                    "not-found",
                    loc.render(),
                    format!("拡張 {url} の定義が不明なため、内容を検証していません"),
                    format!("Extension {url} is unknown, so its content was not checked"),
                );
            }
        }
    }

    /// The instance values of child group `g` (choice names end in `[x]`).
    fn collect<'p>(
        &mut self,
        base: &'p Elem,
        g: &'p ChildGroup,
        obj: &'v Map<String, Value>,
        loc: &Loc<'_>,
        out: &mut Vals<'p, 'v>,
    ) where
        'v: 'p,
    {
        if let Some(prefix) = g.name.strip_suffix("[x]") {
            for (k, v) in obj {
                let Some(t) = choice_type(k, prefix) else {
                    continue;
                };
                if !base.types.iter().any(|bt| bt.code.eq_ignore_ascii_case(t)) {
                    let l = loc.child(Seg::Name(prefix));
                    self.push(
                        Severity::Error,
                        "structure",
                        l.render(),
                        format!(
                            "型 {t} は {} では許可されていません（許可: {}）",
                            base.path,
                            type_list(base)
                        ),
                        format!(
                            "Type {t} is not allowed for {} (allowed: {})",
                            base.path,
                            type_list(base)
                        ),
                    );
                    continue;
                }
                push_values(out, v, get_underscore(obj, k), t, Seg::Choice(prefix, t));
            }
            return;
        }
        let v = get_key(obj, &g.name);
        let ext = get_underscore(obj, &g.name);
        if v.is_none() && ext.is_none() {
            return;
        }
        let t = base
            .types
            .first()
            .map(|t| type_name_of(&t.code))
            .unwrap_or("BackboneElement");
        let t: &'p str = if t == "BackboneElement" || t == "Element" {
            // Model path for FHIRPath typing of backbone elements.
            match &base.content_reference {
                Some(r) => r,
                None => &base.path,
            }
        } else {
            t
        };
        push_values(out, v.unwrap_or(&NULL), ext, t, Seg::Name(&g.name));
    }

    fn cardinality(&mut self, e: &Elem, slice: Option<&str>, n: usize, loc: &Loc<'_>) {
        let low = (n as u64) < e.min as u64;
        let high = e.max.is_some_and(|max| n as u64 > max as u64);
        if !low && !high {
            return;
        }
        let what = match slice {
            Some(s) => format!("{}:{s}", e.path),
            None => e.path.clone(),
        };
        if low {
            self.push(
                Severity::Error,
                "required",
                loc.render(),
                format!("{what} は最低 {} 個必要ですが、{n} 個です", e.min),
                format!("{what}: minimum required = {}, but only found {n}", e.min),
            );
        }
        if let Some(max) = e.max.filter(|_| high) {
            self.push(
                Severity::Error,
                "structure",
                loc.render(),
                format!("{what} は最大 {max} 個ですが、{n} 個あります"),
                format!("{what}: max allowed = {max}, but found {n}"),
            );
        }
    }

    fn invariants(
        &mut self,
        e: &Elem,
        val: &'v Value,
        type_code: &str,
        is_root: bool,
        loc: &Loc<'_>,
        resource: &'v Value,
    ) {
        let term = TermAdapter(self.v.terminology());
        let urls = self.full_urls.clone();
        let resolver = BundleResolver(&urls);
        let ctx = Context::new(resource)
            .with_root_resource(self.cur_root)
            .with_terminology(&term)
            .with_resolver(&resolver);
        for inv in &e.invariants {
            // dom-3 walks the whole resource four times per contained resource in FHIRPath;
            // the same rule natively: every contained resource is referenced by `#id` from
            // somewhere in the resource, or references its container (`#`).
            if inv.key == "dom-3" && is_root {
                if !contained_all_referenced(val) {
                    let (ja, en) =
                        messages::invariant(&inv.key, &inv.key, &inv.human, &inv.source_text);
                    self.push_key(
                        inv.severity,
                        "invariant",
                        loc.render(),
                        Some(inv.key.clone()),
                        ja,
                        en,
                    );
                }
                continue;
            }
            let Some(expr) = &inv.expression else {
                continue;
            };
            // An invariant that reads the element only through child names none of which
            // is present has the same result as on an empty element: computed once.
            let verdict = if inv.absent_in(val) {
                inv.empty_verdict()
            } else {
                let as_resource = is_root && field(val, "resourceType").is_some();
                if expr.has_boolean_form() {
                    // At most one Boolean: evaluated without intermediate collections.
                    let t = (!as_resource).then_some(type_code);
                    match expr.evaluate_boolean(&ctx, val, t) {
                        Ok(Some(false)) => Verdict::Fail,
                        Ok(_) => Verdict::Pass,
                        Err(e) => Verdict::Error(e.message_ja, e.message_en),
                    }
                } else if as_resource {
                    Verdict::of(expr.evaluate(&ctx, val))
                } else {
                    Verdict::of(expr.evaluate_typed(&ctx, val, type_code))
                }
            };
            self.report(inv, verdict, loc);
        }
    }

    fn report(&mut self, inv: &Invariant, verdict: Verdict, loc: &Loc<'_>) {
        let rule = || inv.rule.clone().unwrap_or_else(|| inv.key.clone());
        match verdict {
            Verdict::Pass => {}
            Verdict::Fail => {
                let rule = rule();
                let (ja, en) = messages::invariant(&rule, &inv.key, &inv.human, &inv.source_text);
                self.push_key(inv.severity, "invariant", loc.render(), Some(rule), ja, en);
            }
            Verdict::Several | Verdict::Error(..) => {
                let rule = rule();
                let (ja, en) = match verdict {
                    Verdict::Error(ja, en) => (
                        format!("{rule}: 制約式を評価できませんでした: {ja}"),
                        format!("{rule}: the constraint could not be evaluated: {en}"),
                    ),
                    _ => (
                        format!("{rule}: 制約式の結果が単一の真偽値ではありません"),
                        format!("{rule}: the constraint expression returned more than one item"),
                    ),
                };
                let at = loc.render();
                self.push_key(Severity::Warning, "processing", at, Some(rule), ja, en);
            }
        }
    }

    fn binding(
        &mut self,
        strength: BindingStrength,
        vs: &str,
        val: &Value,
        type_code: &str,
        loc: &Loc<'_>,
    ) {
        if !matches!(
            strength,
            BindingStrength::Required | BindingStrength::Extensible
        ) {
            return;
        }
        if !matches!(
            type_code,
            "code" | "Coding" | "CodeableConcept" | "Quantity" | "string" | "uri"
        ) {
            return;
        }
        let codes = codes_of(val, type_code);
        if codes.is_empty() {
            return;
        }
        let t = self.v.terminology();
        let mut any_unknown = false;
        for (s, c) in &codes {
            match t.validate_code(vs, s.as_deref(), c) {
                Some(true) => return,
                Some(false) => {}
                None => any_unknown = true,
            }
        }
        if any_unknown {
            return;
        }
        let shown: Vec<String> = codes
            .iter()
            .map(|(s, c)| match s {
                Some(s) => format!("{s}#{c}"),
                None => c.clone(),
            })
            .collect();
        let shown = shown.join(", ");
        let sev = if strength == BindingStrength::Required {
            Severity::Error
        } else {
            Severity::Warning
        };
        self.push(
            sev,
            "code-invalid",
            loc.render(),
            format!(
                "コード {shown} は値セット {vs} に含まれていません（{}バインディング）",
                messages::strength_ja(strength)
            ),
            format!(
                "The code {shown} is not in the value set {vs} ({} binding)",
                strength.as_str()
            ),
        );
    }

    /// Display and code existence of a Coding against shipped code systems.
    fn coding(&mut self, val: &Value, loc: &Loc<'_>) {
        let (Some(system), Some(code)) = (
            field(val, "system").and_then(Value::as_str),
            field(val, "code").and_then(Value::as_str),
        ) else {
            return;
        };
        let Some(cs) = self.v.terminology().code_system(system) else {
            return;
        };
        match cs.concept(code) {
            Some(concept) => {
                let Some(display) = field(val, "display").and_then(Value::as_str) else {
                    return;
                };
                let ok = concept
                    .display
                    .as_deref()
                    .is_none_or(|x| same_display(x, display))
                    || concept
                        .designations
                        .iter()
                        .any(|(_, x)| same_display(x, display));
                if !ok {
                    let expected = concept.display.as_deref().unwrap_or("");
                    self.push(
                        Severity::Warning,
                        "code-invalid",
                        format!("{}.display", loc.render()),
                        format!("{system}#{code} の表示名は '{expected}' であるべきですが、'{display}' です"),
                        format!("Wrong display '{display}' for {system}#{code}: expected '{expected}'"),
                    );
                }
            }
            None if cs.is_complete() => self.push(
                Severity::Error,
                "code-invalid",
                format!("{}.code", loc.render()),
                format!("コード {code} はコードシステム {system} に存在しません"),
                format!("Unknown code '{code}' in the code system {system}"),
            ),
            None => {}
        }
    }

    /// The resource type a reference points to, if it can be told.
    fn reference_type(&self, val: &'v Value) -> Option<(&'v str, Option<&'v Value>)> {
        let r = field(val, "reference").and_then(Value::as_str);
        if let Some(r) = r {
            if let Some(id) = r.strip_prefix('#') {
                let c = self
                    .cur_root
                    .get("contained")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|c| field(c, "id").and_then(Value::as_str) == Some(id))?;
                return Some((field(c, "resourceType")?.as_str()?, Some(c)));
            }
            if let Some(res) = self.full_urls.get(r) {
                return Some((field(res, "resourceType")?.as_str()?, Some(res)));
            }
            if r.starts_with("urn:") {
                return None;
            }
            let parts: Vec<&str> = r.split('/').collect();
            let n = parts.len();
            let t = if n >= 4 && parts[n - 2] == "_history" {
                parts[n - 4]
            } else if n >= 2 {
                parts[n - 2]
            } else {
                return None;
            };
            if iryo_fhir_spec::r4().is_resource_type(t) {
                return Some((t, None));
            }
            return None;
        }
        field(val, "type")
            .and_then(Value::as_str)
            .map(|t| (t, None))
    }

    fn reference(&mut self, e: &Elem, val: &'v Value, loc: &Loc<'_>) {
        if let Some(id) = val
            .get("reference")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
        {
            let found = id.is_empty()
                || self
                    .cur_root
                    .get("contained")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|c| field(c, "id").and_then(Value::as_str) == Some(id));
            if !found {
                self.push(
                    Severity::Error,
                    "not-found",
                    format!("{}.reference", loc.render()),
                    format!("参照先の contained リソース #{id} がありません"),
                    format!("The contained resource #{id} referenced here does not exist"),
                );
                return;
            }
        }
        let mut targets = e
            .types
            .iter()
            .filter(|t| t.code == "Reference")
            .flat_map(|t| t.target_profiles.iter())
            .peekable();
        if targets.peek().is_none() {
            return;
        }
        let Some((actual, _)) = self.reference_type(val) else {
            return;
        };
        let mut allowed: Vec<Cow<'_, str>> = Vec::new();
        for t in targets {
            let name: Cow<'_, str> =
                match t.strip_prefix("http://hl7.org/fhir/StructureDefinition/") {
                    Some(n) => Cow::Borrowed(n),
                    None => match self.v.profile(t) {
                        Some(p) => Cow::Owned(p.type_name.clone()),
                        None => return,
                    },
                };
            if name == "Resource" || name == "DomainResource" {
                return;
            }
            if !allowed.contains(&name) {
                allowed.push(name);
            }
        }
        if !allowed.iter().any(|n| n == actual) {
            let list = allowed
                .iter()
                .map(|c| c.as_ref())
                .collect::<Vec<_>>()
                .join(", ");
            self.push(
                Severity::Error,
                "structure",
                loc.render(),
                format!("参照先のリソース型 {actual} はここでは許可されていません（許可: {list}）"),
                format!(
                    "The referenced resource type {actual} is not allowed here (allowed: {list})"
                ),
            );
        }
    }

    /// The discriminators in effect for a group, its targets per slice, and the value index.
    fn slice_index(&self, prof: &Arc<Profile>, g: &ChildGroup) -> SliceIndex {
        let base = &prof.elements[g.base];
        let discs: Vec<(DiscKind, String)> = match base.slicing.as_ref() {
            Some(s) if !s.discriminators.is_empty() => s.discriminators.clone(),
            _ => {
                if g.name.ends_with("[x]") {
                    vec![(DiscKind::Type, "$this".to_string())]
                } else if g.name == "extension" || g.name == "modifierExtension" {
                    vec![(DiscKind::Value, "url".to_string())]
                } else {
                    Vec::new()
                }
            }
        };
        let segs: Vec<Vec<String>> = discs
            .iter()
            .map(|(_, p)| {
                split_path(p)
                    .into_iter()
                    .filter(|s| *s != "$this")
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        let plain = segs.iter().flatten().all(|s| !s.contains('('));
        let targets: Vec<Vec<Target>> = g
            .slices
            .iter()
            .map(|&s| {
                discs
                    .iter()
                    .zip(&segs)
                    .map(|(_, segs)| self.disc_target(prof, s, segs))
                    .collect()
            })
            .collect();
        let mut map = FastMap::default();
        let mut rest = Vec::new();
        for (pos, ts) in targets.iter().enumerate() {
            if discs.is_empty() {
                continue;
            }
            // The expected string of each discriminator, when it is one.
            let mut key = String::new();
            let mut never = false;
            let mut indexable = plain;
            for ((kind, _), t) in discs.iter().zip(ts) {
                match t {
                    Target::Missing | Target::ExtUrl(None) => never = true,
                    Target::ExtUrl(Some(u)) => key_part(&mut key, u),
                    Target::Elem(p, ei, _) => {
                        let e = &p.as_ref().unwrap_or(prof).elements[*ei];
                        let expected = match (kind, &e.fixed, &e.pattern) {
                            (DiscKind::Value | DiscKind::Pattern, Some(Value::String(f)), _) => {
                                Some(f)
                            }
                            (DiscKind::Value | DiscKind::Pattern, None, Some(Value::String(p))) => {
                                Some(p)
                            }
                            _ => None,
                        };
                        match expected {
                            Some(x) => key_part(&mut key, x),
                            None => indexable = false,
                        }
                    }
                }
            }
            if never {
                continue;
            }
            if indexable {
                map.entry(key).or_insert(pos);
            } else {
                rest.push(pos);
            }
        }
        SliceIndex {
            discs,
            segs,
            targets,
            plain,
            map,
            rest,
        }
    }

    /// The slice (position in the group) an instance value belongs to: the first that matches.
    fn match_slice(
        &mut self,
        prof: &Arc<Profile>,
        idx: &SliceIndex,
        x: &Val<'_, 'v>,
    ) -> Option<usize> {
        if idx.discs.is_empty() {
            return None;
        }
        if idx.plain && !idx.map.is_empty() {
            let mut key = String::new();
            let mut possible = true;
            for segs in &idx.segs {
                match plain_value(x.value, segs) {
                    Pv::Many => return self.match_linear(prof, idx, x, 0..idx.targets.len()),
                    Pv::One(Value::String(s)) => key_part(&mut key, s),
                    Pv::One(_) | Pv::None => possible = false,
                }
            }
            let hit = if possible {
                idx.map.get(&key).copied()
            } else {
                None
            };
            let bound = hit.unwrap_or(usize::MAX);
            let rest = idx
                .rest
                .iter()
                .copied()
                .take_while(|&pos| pos < bound)
                .find(|&pos| self.slice_matches(prof, idx, pos, x));
            return rest.or(hit);
        }
        self.match_linear(prof, idx, x, 0..idx.targets.len())
    }

    fn match_linear(
        &mut self,
        prof: &Arc<Profile>,
        idx: &SliceIndex,
        x: &Val<'_, 'v>,
        range: std::ops::Range<usize>,
    ) -> Option<usize> {
        range
            .into_iter()
            .find(|&pos| self.slice_matches(prof, idx, pos, x))
    }

    /// Whether instance value `x` belongs to slice `pos` of the group.
    fn slice_matches(
        &mut self,
        prof: &Arc<Profile>,
        idx: &SliceIndex,
        pos: usize,
        x: &Val<'_, 'v>,
    ) -> bool {
        !idx.discs.is_empty()
            && (0..idx.discs.len()).all(|di| self.discriminator(prof, idx, pos, di, x))
    }

    /// The expected side of a discriminator: the element at `segs` below slice `s`.
    fn disc_target(&self, prof: &Arc<Profile>, s: usize, segs: &[String]) -> Target {
        let mut cur: (Arc<Profile>, usize) = (prof.clone(), s);
        let mut resolved = false;
        for seg in segs {
            if seg == "resolve()" {
                resolved = true;
                continue;
            }
            if seg.starts_with("ofType(") {
                continue;
            }
            let (p, ei) = (cur.0.clone(), cur.1);
            let (name, ext_url) = match quoted_arg(seg, "extension") {
                Some(u) => ("extension", Some(u)),
                None => (seg.as_str(), None),
            };
            let ce = p.resolve_content(ei);
            let g = p
                .group(ce, name)
                .or_else(|| p.group(ce, &format!("{name}[x]")))
                .map(|g| (g.base, g.slices.clone()));
            match g {
                Some((gbase, slices)) => {
                    let next = match ext_url {
                        Some(u) => slices.iter().copied().find(|&si| {
                            p.elements[si]
                                .types
                                .iter()
                                .any(|t| t.profiles.iter().any(|pu| strip_version(pu) == u))
                        }),
                        None => Some(gbase),
                    };
                    match next {
                        Some(n) => cur = (p, n),
                        None => match ext_url.and_then(|u| self.v.profile(u)) {
                            Some(ep) => cur = (ep, 0),
                            None => return Target::Missing,
                        },
                    }
                }
                None => {
                    // Not unrolled: continue in the type's profile.
                    let e = &p.elements[ei];
                    if name == "url" && e.types.iter().any(|t| t.code == "Extension") {
                        // Extension slice: the url is the extension's canonical.
                        let u = e.types.iter().find_map(|t| t.profiles.first());
                        return Target::ExtUrl(u.map(|u| strip_version(u).to_string()));
                    }
                    let tp = e.types.first().and_then(|t| {
                        t.profiles
                            .first()
                            .and_then(|u| self.v.profile(u))
                            .or_else(|| self.v.base_profile(type_name_of(&t.code)))
                    });
                    match tp.and_then(|tp| {
                        let ce = tp.resolve_content(0);
                        let g = tp
                            .group(ce, name)
                            .or_else(|| tp.group(ce, &format!("{name}[x]")))?
                            .base;
                        Some((tp, g))
                    }) {
                        Some(n) => cur = n,
                        None => return Target::Missing,
                    }
                }
            }
        }
        let same = Arc::ptr_eq(&cur.0, prof);
        Target::Elem((!same).then_some(cur.0), cur.1, resolved)
    }

    fn discriminator(
        &mut self,
        prof: &Arc<Profile>,
        idx: &SliceIndex,
        pos: usize,
        di: usize,
        x: &Val<'_, 'v>,
    ) -> bool {
        let kind = idx.discs[di].0;
        let segs = &idx.segs[di];
        let (p, ei, resolved) = match &idx.targets[pos][di] {
            Target::Missing => return false,
            Target::ExtUrl(u) => {
                return match u {
                    Some(u) => x_values(self, x, segs)
                        .iter()
                        .any(|v| v.as_str() == Some(u.as_str())),
                    None => false,
                }
            }
            Target::Elem(p, ei, resolved) => (p.as_ref().unwrap_or(prof), *ei, *resolved),
        };
        let e = &p.elements[ei];
        let actual = x_values(self, x, segs);
        match kind {
            DiscKind::Value | DiscKind::Pattern => {
                if let Some(f) = &e.fixed {
                    actual.iter().any(|v| fixed_equals(v, f))
                } else if let Some(pt) = &e.pattern {
                    actual.iter().any(|v| pattern_matches(v, pt))
                } else if let Some((BindingStrength::Required, vs)) = &e.binding {
                    let t = self.v.terminology();
                    actual.iter().any(|v| {
                        codes_of(v, "code")
                            .iter()
                            .any(|(s, c)| t.validate_code(vs, s.as_deref(), c) == Some(true))
                    })
                } else {
                    false
                }
            }
            DiscKind::Exists => {
                let present = !actual.is_empty();
                if e.min >= 1 {
                    present
                } else if e.max == Some(0) {
                    !present
                } else {
                    true
                }
            }
            DiscKind::Type => {
                if segs.is_empty() {
                    return e
                        .types
                        .iter()
                        .any(|t| type_name_of(&t.code).eq_ignore_ascii_case(x.type_code));
                }
                actual.iter().any(|v| {
                    let t = field(v, "resourceType")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    e.types.iter().any(|x| type_name_of(&x.code) == t)
                })
            }
            DiscKind::Profile => {
                let urls: Vec<&str> = e
                    .types
                    .iter()
                    .flat_map(|t| {
                        if resolved {
                            t.target_profiles.iter()
                        } else {
                            t.profiles.iter()
                        }
                    })
                    .map(String::as_str)
                    .collect();
                if urls.is_empty() {
                    return false;
                }
                actual
                    .iter()
                    .any(|v| urls.iter().any(|u| self.conforms(v, u)))
            }
        }
    }

    /// Cheap conformance for profile discriminators: same type, and the resource declares the
    /// profile, or validating against it finds no error.
    fn conforms(&mut self, v: &'v Value, url: &str) -> bool {
        let Some(p) = self.v.profile(url) else {
            return false;
        };
        let t = field(v, "resourceType").and_then(Value::as_str);
        if let Some(t) = t {
            if t != p.type_name {
                return false;
            }
            let declared = v
                .get("meta")
                .and_then(|m| field(m, "profile"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|d| strip_version(d) == p.url);
            if declared {
                return true;
            }
        }
        if self.depth > MAX_DEPTH {
            return false;
        }
        let mut sub = Walk::with_urls(self.v, self.root, self.full_urls.clone());
        sub.depth = self.depth + 1;
        let tn = p.type_name.clone();
        sub.element(&p, 0, v, &tn, &Loc::root(""), v);
        !sub.issues
            .iter()
            .any(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
    }
}

/// Same display text: whitespace runs collapsed, case ignored.
fn same_display(a: &str, b: &str) -> bool {
    a == b || iryo_fhirpath::str_equiv(a, b)
}

/// Calls `f` with the location of an instance value below `loc`.
fn at<R>(loc: &Loc<'_>, x: &Val<'_, '_>, f: impl FnOnce(&Loc<'_>) -> R) -> R {
    let l1 = loc.child(x.seg);
    match x.index {
        Some(i) => f(&l1.child(Seg::Index(i))),
        None => f(&l1),
    }
}

/// The location of an instance value below `loc`, rendered.
fn val_loc(loc: &Loc<'_>, x: &Val<'_, '_>) -> String {
    at(loc, x, |l| l.render())
}

/// The value at a discriminator path of plain element names, if there is at most one.
fn plain_value<'v>(start: &'v Value, segs: &[String]) -> Pv<'v> {
    let mut cur = start;
    for seg in segs {
        let Value::Object(o) = cur else {
            return Pv::None;
        };
        let next = match get_key(o, seg) {
            Some(Value::Array(a)) => match a.len() {
                0 => None,
                1 => Some(&a[0]),
                _ => return Pv::Many,
            },
            Some(v) => Some(v),
            None => {
                // Choice element named without its type suffix.
                let mut found = None;
                for (k, v) in o {
                    if choice_type(k, seg).is_some() {
                        if found.is_some() {
                            return Pv::Many;
                        }
                        found = Some(v);
                    }
                }
                found
            }
        };
        match next {
            Some(n) => cur = n,
            None => return Pv::None,
        }
    }
    Pv::One(cur)
}

/// Removes from `needed` every id whose local reference `#id` occurs in a string below `v`;
/// stops as soon as `needed` is empty. Returns true when a string is exactly `#` (a reference
/// to the container) and `hash` is set (then the walk goes on to the end).
fn find_local_refs(v: &Value, needed: &mut Vec<&str>, hash: bool) -> bool {
    match v {
        Value::String(s) => {
            if let Some(id) = s.strip_prefix('#') {
                if hash && id.is_empty() {
                    return true;
                }
                needed.retain(|n| *n != id);
            }
            false
        }
        Value::Array(a) => {
            a.iter().any(|x| {
                let found = find_local_refs(x, needed, hash);
                found || (!hash && needed.is_empty())
            }) && hash
        }
        Value::Object(o) => {
            o.values().any(|x| {
                let found = find_local_refs(x, needed, hash);
                found || (!hash && needed.is_empty())
            }) && hash
        }
        _ => false,
    }
}

/// dom-3: each contained resource is referenced from the resource (`#id`) or refers to its
/// container (`#`).
fn contained_all_referenced(res: &Value) -> bool {
    let Some(contained) = field(res, "contained").and_then(Value::as_array) else {
        return true;
    };
    let mut needed: Vec<&str> = contained
        .iter()
        .filter_map(|c| field(c, "id").and_then(Value::as_str))
        .collect();
    if !needed.is_empty() {
        find_local_refs(res, &mut needed, false);
    }
    // The ones not referenced must refer to their container.
    contained
        .iter()
        .all(|c| match field(c, "id").and_then(Value::as_str) {
            Some(id) if needed.contains(&id) => find_local_refs(c, &mut Vec::new(), true),
            _ => true,
        })
}

/// The instance values at a discriminator path.
fn x_values<'v>(w: &Walk<'_, 'v>, x: &Val<'_, 'v>, segs: &[String]) -> Vec<&'v Value> {
    let mut cur: Vec<&'v Value> = vec![x.value];
    for seg in segs {
        let mut next = Vec::new();
        for v in cur {
            if seg == "resolve()" {
                if let Some((_, Some(r))) = w.reference_type(v) {
                    next.push(r);
                }
                continue;
            }
            if let Some(t) = quoted_arg(seg, "ofType") {
                if field(v, "resourceType")
                    .and_then(Value::as_str)
                    .is_some_and(|rt| rt == t)
                    || x.type_code == t
                {
                    next.push(v);
                }
                continue;
            }
            let Value::Object(o) = v else { continue };
            if let Some(u) = quoted_arg(seg, "extension") {
                for e in o
                    .get("extension")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if field(e, "url").and_then(Value::as_str) == Some(u) {
                        next.push(e);
                    }
                }
                continue;
            }
            match get_key(o, seg) {
                Some(Value::Array(a)) => next.extend(a.iter()),
                Some(v) => next.push(v),
                None => {
                    // Choice element named without its type suffix.
                    for (k, v) in o {
                        if choice_type(k, seg).is_some() {
                            next.push(v);
                        }
                    }
                }
            }
        }
        cur = next;
    }
    cur
}

fn type_list(e: &Elem) -> String {
    e.types
        .iter()
        .map(|t| t.code.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn push_values<'p, 'v>(
    out: &mut Vals<'p, 'v>,
    v: &'v Value,
    ext: Option<&'v Value>,
    t: &'p str,
    seg: Seg<'p>,
) {
    let val = |value: &'v Value, index: Option<usize>| Val {
        value,
        type_code: t,
        seg,
        index,
    };
    match v {
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                out.push(val(item, Some(i)));
            }
            // Extension-only entries of a primitive array beyond the values.
            if let Some(Value::Array(ea)) = ext {
                for i in a.len()..ea.len() {
                    out.push(val(&NULL, Some(i)));
                }
            }
        }
        Value::Null => {
            if let Some(Value::Array(ea)) = ext {
                for i in 0..ea.len() {
                    out.push(val(&NULL, Some(i)));
                }
            } else if ext.is_some() {
                out.push(val(&NULL, None));
            }
        }
        _ => out.push(val(v, None)),
    }
}
