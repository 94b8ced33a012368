//! The instance walker: follows a resource and a compiled profile side by side.

use crate::messages;
use crate::profile::{DiscKind, Elem, Profile};
use crate::{strip_version, ValidationIssue, Validator};
use iryo_fhir_spec::{BindingStrength, Severity};
use iryo_fhirpath::{Context, Item};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Nested resources deeper than this are not followed.
const MAX_DEPTH: usize = 24;
/// At most this many issues are reported.
const MAX_ISSUES: usize = 1000;
/// Invariants not evaluated: `ele-1` (no empty elements) is enforced by the structural
/// check on every element already.
const SKIPPED: &[&str] = &["ele-1"];

static NULL: Value = Value::Null;

/// The expected side of a discriminator, resolved once per walk.
enum Target {
    /// The path leads nowhere in the slice's definition: the slice cannot match.
    Missing,
    /// `url` of an extension slice: the extension's canonical URL.
    ExtUrl(Option<String>),
    /// The element at the path (profile, index) and whether the path went through `resolve()`.
    Elem(Arc<Profile>, usize, bool),
}

struct CachedDisc {
    segs: Vec<String>,
    target: Target,
}

fn owned(segs: &[&str]) -> Vec<String> {
    segs.iter().map(|s| s.to_string()).collect()
}

/// One instance value under an element name.
struct Val<'v> {
    value: &'v Value,
    type_code: String,
    loc: String,
}

pub(crate) struct Walk<'a, 'v> {
    v: &'a Validator,
    root: &'v Value,
    issues: Vec<ValidationIssue>,
    /// Bundle entries by fullUrl (when the root is a Bundle).
    full_urls: Arc<HashMap<&'v str, &'v Value>>,
    depth: usize,
    pub only_base: bool,
    /// `%rootResource` for invariants: the container of a contained resource, else the
    /// resource itself.
    cur_root: &'v Value,
    /// How many leading issues come from the structural check.
    structural: usize,
    /// Discriminator targets by (profile, slice element, discriminator index).
    disc_cache: HashMap<(usize, usize, usize), Arc<CachedDisc>>,
}

/// `resolve()` inside a Bundle: entries by fullUrl.
struct BundleResolver<'m, 'v>(&'m HashMap<&'v str, &'v Value>);

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

/// `Quantity` for `valueQuantity` with prefix `value`, if the suffix names a type.
fn choice_type(key: &str, prefix: &str) -> Option<String> {
    let suffix = key.strip_prefix(prefix)?;
    if !suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    let m = iryo_fhir_spec::r4();
    if m.type_def(suffix).is_some() {
        return Some(suffix.to_string());
    }
    let mut lower = suffix.to_string();
    lower[..1].make_ascii_lowercase();
    m.type_def(&lower).is_some().then_some(lower)
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
        let mut full_urls = HashMap::new();
        if root.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
            for e in root
                .get("entry")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let (Some(u), Some(r)) =
                    (e.get("fullUrl").and_then(Value::as_str), e.get("resource"))
                {
                    full_urls.insert(u, r);
                }
            }
        }
        Walk {
            v,
            root,
            issues: Vec::new(),
            full_urls: Arc::new(full_urls),
            depth: 0,
            only_base: false,
            cur_root: root,
            structural: 0,
            disc_cache: HashMap::new(),
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
        let Some(rt) = root.get("resourceType").and_then(Value::as_str) else {
            return;
        };
        if !iryo_fhir_spec::r4().is_resource_type(rt) {
            return;
        }
        let explicit: Vec<String> = profiles.iter().map(|s| s.to_string()).collect();
        self.resource(root, &explicit, !explicit.is_empty(), rt.to_string(), None);
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

    fn push(&mut self, severity: Severity, code: &'static str, loc: &str, ja: String, en: String) {
        self.push_key(severity, code, loc, None, ja, en);
    }

    fn push_key(
        &mut self,
        severity: Severity,
        code: &'static str,
        loc: &str,
        key: Option<String>,
        ja: String,
        en: String,
    ) {
        if self.issues.len() >= MAX_ISSUES {
            return;
        }
        self.issues.push(ValidationIssue {
            severity,
            code,
            expression: loc.to_string(),
            key,
            message_ja: ja,
            message_en: en,
        });
        if self.issues.len() == MAX_ISSUES {
            self.issues.push(ValidationIssue {
                severity: Severity::Error,
                code: "too-costly",
                expression: loc.to_string(),
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
        explicit: &[String],
        only_explicit: bool,
        loc: String,
        container: Option<&'v Value>,
    ) {
        let Some(rt) = res.get("resourceType").and_then(Value::as_str) else {
            return;
        };
        if self.depth > MAX_DEPTH {
            return;
        }
        let mut urls: Vec<String> = explicit.to_vec();
        if !only_explicit && !self.only_base {
            for p in res
                .pointer("/meta/profile")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !urls.iter().any(|u| strip_version(u) == strip_version(p)) {
                    urls.push(p.to_string());
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
                    &loc,
                    format!(
                        "プロファイル {u} は {} 用であり、{rt} には適用できません",
                        p.type_name
                    ),
                    format!("Profile {u} is for {}, not for {rt}", p.type_name),
                ),
                None => self.push(
                    Severity::Warning,
                    "not-found",
                    &loc,
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
            self.element(&p, 0, res, rt, &loc, res);
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
        loc: &str,
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
                    loc,
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
                    loc,
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
        if !is_primitive(type_code) {
            self.invariants(e, val, type_code, ei == 0, loc, resource);
        }
        let Value::Object(obj) = val else {
            return;
        };
        // A nested resource (contained, Bundle.entry.resource, Parameters.parameter.resource).
        if ei != 0 && obj.contains_key("resourceType") {
            let explicit: Vec<String> = e
                .types
                .iter()
                .flat_map(|t| t.profiles.iter().cloned())
                .collect();
            let container = e.path.ends_with(".contained").then_some(resource);
            self.resource(val, &explicit, false, loc.to_string(), container);
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
        loc: &str,
        resource: &'v Value,
    ) {
        for g in &prof.elements[pe].children {
            let base = &prof.elements[g.base];
            let vals = self.collect(base, &g.name, obj, loc);
            let shown_loc = format!("{loc}.{}", g.name.trim_end_matches("[x]"));
            self.cardinality(base, None, vals.len(), &shown_loc);
            let slicing = base.slicing.as_ref();
            if g.slices.is_empty() {
                for x in &vals {
                    self.element(prof, g.base, x.value, &x.type_code, &x.loc, resource);
                }
                continue;
            }
            let implicit;
            let discs: &[(DiscKind, String)] = match slicing {
                Some(s) if !s.discriminators.is_empty() => &s.discriminators,
                _ => {
                    implicit = if g.name.ends_with("[x]") {
                        vec![(DiscKind::Type, "$this".to_string())]
                    } else if g.name == "extension" || g.name == "modifierExtension" {
                        vec![(DiscKind::Value, "url".to_string())]
                    } else {
                        Vec::new()
                    };
                    &implicit
                }
            };
            let mut matched: Vec<Option<usize>> = Vec::with_capacity(vals.len());
            for x in &vals {
                let m = g
                    .slices
                    .iter()
                    .position(|&s| self.slice_matches(prof, s, x, discs));
                matched.push(m);
            }
            for (si, &s) in g.slices.iter().enumerate() {
                let n = matched.iter().filter(|m| **m == Some(si)).count();
                let se = &prof.elements[s];
                self.cardinality(se, se.slice_name.as_deref(), n, &shown_loc);
            }
            let rules = slicing.map_or("open", |s| s.rules.as_str());
            if rules == "closed" {
                for (x, m) in vals.iter().zip(&matched) {
                    if m.is_none() {
                        self.push(
                            Severity::Error,
                            "structure",
                            &x.loc,
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
                                    &x.loc,
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
                match m {
                    Some(i) => {
                        self.element(prof, g.slices[*i], x.value, &x.type_code, &x.loc, resource)
                    }
                    None => {
                        if g.name == "extension" || g.name == "modifierExtension" {
                            self.unsliced_extension(x, resource);
                        } else {
                            self.element(prof, g.base, x.value, &x.type_code, &x.loc, resource);
                        }
                    }
                }
            }
        }
    }

    /// An extension that matches no slice: checked against its own definition when known.
    fn unsliced_extension(&mut self, x: &Val<'v>, resource: &'v Value) {
        let Some(url) = x.value.get("url").and_then(Value::as_str) else {
            return;
        };
        match self.v.profile(url) {
            Some(p) if p.type_name == "Extension" => {
                self.element(&p, 0, x.value, "Extension", &x.loc, resource)
            }
            _ => {
                if let Some(base) = self.v.base_profile("Extension") {
                    self.element(&base, 0, x.value, "Extension", &x.loc, resource);
                }
                self.push(
                    Severity::Warning,
                    "not-found",
                    &x.loc,
                    format!("拡張 {url} の定義が不明なため、内容を検証していません"),
                    format!("Extension {url} is unknown, so its content was not checked"),
                );
            }
        }
    }

    /// The instance values of child `name` (choice names end in `[x]`).
    fn collect(
        &mut self,
        base: &Elem,
        name: &str,
        obj: &'v Map<String, Value>,
        loc: &str,
    ) -> Vec<Val<'v>> {
        let mut out = Vec::new();
        if let Some(prefix) = name.strip_suffix("[x]") {
            for (k, v) in obj {
                let Some(t) = choice_type(k, prefix) else {
                    continue;
                };
                if !base.types.iter().any(|bt| bt.code.eq_ignore_ascii_case(&t)) {
                    self.push(
                        Severity::Error,
                        "structure",
                        &format!("{loc}.{prefix}"),
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
                let l = format!("{loc}.{prefix}.ofType({t})");
                push_values(&mut out, v, obj.get(&format!("_{k}")), &t, &l);
            }
            return out;
        }
        let t = base
            .types
            .first()
            .map(|t| type_name_of(&t.code).to_string())
            .unwrap_or_else(|| "BackboneElement".to_string());
        let t = if t == "BackboneElement" || t == "Element" {
            // Model path for FHIRPath typing of backbone elements.
            if base.content_reference.is_some() {
                base.content_reference.clone().unwrap_or(t)
            } else {
                base.path.clone()
            }
        } else {
            t
        };
        let v = obj.get(name);
        let ext = obj.get(&format!("_{name}"));
        if v.is_none() && ext.is_none() {
            return out;
        }
        push_values(
            &mut out,
            v.unwrap_or(&NULL),
            ext,
            &t,
            &format!("{loc}.{name}"),
        );
        out
    }

    fn cardinality(&mut self, e: &Elem, slice: Option<&str>, n: usize, loc: &str) {
        let what = match slice {
            Some(s) => format!("{}:{s}", e.path),
            None => e.path.clone(),
        };
        if (n as u64) < e.min as u64 {
            self.push(
                Severity::Error,
                "required",
                loc,
                format!("{what} は最低 {} 個必要ですが、{n} 個です", e.min),
                format!("{what}: minimum required = {}, but only found {n}", e.min),
            );
        }
        if let Some(max) = e.max {
            if n as u64 > max as u64 {
                self.push(
                    Severity::Error,
                    "structure",
                    loc,
                    format!("{what} は最大 {max} 個ですが、{n} 個あります"),
                    format!("{what}: max allowed = {max}, but found {n}"),
                );
            }
        }
    }

    fn invariants(
        &mut self,
        e: &Elem,
        val: &'v Value,
        type_code: &str,
        is_root: bool,
        loc: &str,
        resource: &'v Value,
    ) {
        if e.invariants.is_empty() {
            return;
        }
        let term = TermAdapter(self.v.terminology());
        let urls = self.full_urls.clone();
        let resolver = BundleResolver(&urls);
        let ctx = Context::new(resource)
            .with_root_resource(self.cur_root)
            .with_terminology(&term)
            .with_resolver(&resolver);
        for inv in &e.invariants {
            if SKIPPED.contains(&inv.key.as_str()) {
                continue;
            }
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
                        loc,
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
            let out = if is_root && val.get("resourceType").is_some() {
                expr.evaluate(&ctx, val)
            } else {
                expr.evaluate_typed(&ctx, val, type_code.to_string())
            };
            let rule = inv.rule.clone().unwrap_or_else(|| inv.key.clone());
            let ok = match out {
                Ok(items) => match items.as_slice() {
                    [] => true,
                    [Item::Boolean(b)] => *b,
                    [_] => true,
                    _ => {
                        self.push_key(
                            Severity::Warning,
                            "processing",
                            loc,
                            Some(rule.clone()),
                            format!("{rule}: 制約式の結果が単一の真偽値ではありません"),
                            format!(
                                "{rule}: the constraint expression returned more than one item"
                            ),
                        );
                        true
                    }
                },
                Err(err) => {
                    self.push_key(
                        Severity::Warning,
                        "processing",
                        loc,
                        Some(rule.clone()),
                        format!("{rule}: 制約式を評価できませんでした: {}", err.message_ja),
                        format!(
                            "{rule}: the constraint could not be evaluated: {}",
                            err.message_en
                        ),
                    );
                    true
                }
            };
            if !ok {
                let (ja, en) = messages::invariant(&rule, &inv.key, &inv.human, &inv.source_text);
                self.push_key(inv.severity, "invariant", loc, Some(rule), ja, en);
            }
        }
    }

    fn binding(
        &mut self,
        strength: BindingStrength,
        vs: &str,
        val: &Value,
        type_code: &str,
        loc: &str,
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
            loc,
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
    fn coding(&mut self, val: &Value, loc: &str) {
        let (Some(system), Some(code)) = (
            val.get("system").and_then(Value::as_str),
            val.get("code").and_then(Value::as_str),
        ) else {
            return;
        };
        let Some(cs) = self.v.terminology().code_system(system) else {
            return;
        };
        match cs.concept(code) {
            Some(concept) => {
                let Some(display) = val.get("display").and_then(Value::as_str) else {
                    return;
                };
                let norm = |s: &str| {
                    s.split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .to_lowercase()
                };
                let d = norm(display);
                let ok = concept.display.as_deref().is_none_or(|x| norm(x) == d)
                    || concept.designations.iter().any(|(_, x)| norm(x) == d);
                if !ok {
                    let expected = concept.display.as_deref().unwrap_or("");
                    self.push(
                        Severity::Warning,
                        "code-invalid",
                        &format!("{loc}.display"),
                        format!("{system}#{code} の表示名は '{expected}' であるべきですが、'{display}' です"),
                        format!("Wrong display '{display}' for {system}#{code}: expected '{expected}'"),
                    );
                }
            }
            None if cs.is_complete() => self.push(
                Severity::Error,
                "code-invalid",
                &format!("{loc}.code"),
                format!("コード {code} はコードシステム {system} に存在しません"),
                format!("Unknown code '{code}' in the code system {system}"),
            ),
            None => {}
        }
    }

    /// The resource type a reference points to, if it can be told.
    fn reference_type(&self, val: &'v Value) -> Option<(String, Option<&'v Value>)> {
        let r = val.get("reference").and_then(Value::as_str);
        if let Some(r) = r {
            if let Some(id) = r.strip_prefix('#') {
                let c = self
                    .cur_root
                    .get("contained")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|c| c.get("id").and_then(Value::as_str) == Some(id))?;
                return Some((c.get("resourceType")?.as_str()?.to_string(), Some(c)));
            }
            if let Some(res) = self.full_urls.get(r) {
                return Some((res.get("resourceType")?.as_str()?.to_string(), Some(res)));
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
                return Some((t.to_string(), None));
            }
            return None;
        }
        val.get("type")
            .and_then(Value::as_str)
            .map(|t| (t.to_string(), None))
    }

    fn reference(&mut self, e: &Elem, val: &'v Value, loc: &str) {
        let targets: Vec<&String> = e
            .types
            .iter()
            .filter(|t| t.code == "Reference")
            .flat_map(|t| t.target_profiles.iter())
            .collect();
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
                    .any(|c| c.get("id").and_then(Value::as_str) == Some(id));
            if !found {
                self.push(
                    Severity::Error,
                    "not-found",
                    &format!("{loc}.reference"),
                    format!("参照先の contained リソース #{id} がありません"),
                    format!("The contained resource #{id} referenced here does not exist"),
                );
                return;
            }
        }
        if targets.is_empty() {
            return;
        }
        let Some((actual, _)) = self.reference_type(val) else {
            return;
        };
        let mut allowed: Vec<String> = Vec::new();
        for t in &targets {
            let name = match t.strip_prefix("http://hl7.org/fhir/StructureDefinition/") {
                Some(n) => n.to_string(),
                None => match self.v.profile(t) {
                    Some(p) => p.type_name.clone(),
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
        if !allowed.contains(&actual) {
            let list = allowed.join(", ");
            self.push(
                Severity::Error,
                "structure",
                loc,
                format!("参照先のリソース型 {actual} はここでは許可されていません（許可: {list}）"),
                format!(
                    "The referenced resource type {actual} is not allowed here (allowed: {list})"
                ),
            );
        }
    }

    /// Whether instance value `x` belongs to slice element `s`.
    fn slice_matches(
        &mut self,
        prof: &Arc<Profile>,
        s: usize,
        x: &Val<'v>,
        discs: &[(DiscKind, String)],
    ) -> bool {
        if discs.is_empty() {
            return false;
        }
        discs
            .iter()
            .enumerate()
            .all(|(di, (kind, path))| self.discriminator(prof, s, x, *kind, path, di))
    }

    /// The expected side of a discriminator: the element at `path` below slice `s`.
    fn disc_target(&self, prof: &Arc<Profile>, s: usize, path: &str) -> CachedDisc {
        let segs: Vec<&str> = split_path(path)
            .into_iter()
            .filter(|s| *s != "$this")
            .collect();
        // Expected side: the element at `path` below the slice.
        let mut cur: (Arc<Profile>, usize) = (prof.clone(), s);
        let mut resolved = false;
        let mut found = true;
        for seg in &segs {
            if *seg == "resolve()" {
                resolved = true;
                continue;
            }
            if seg.starts_with("ofType(") {
                continue;
            }
            let (p, ei) = (cur.0.clone(), cur.1);
            let (name, ext_url) = match quoted_arg(seg, "extension") {
                Some(u) => ("extension", Some(u)),
                None => (*seg, None),
            };
            let ce = p.resolve_content(ei);
            let g = p
                .group(ce, name)
                .or_else(|| p.group(ce, &format!("{name}[x]")))
                .cloned();
            match g {
                Some(g) => {
                    let next = match ext_url {
                        Some(u) => g.slices.iter().copied().find(|&si| {
                            p.elements[si]
                                .types
                                .iter()
                                .any(|t| t.profiles.iter().any(|pu| strip_version(pu) == u))
                        }),
                        None => Some(g.base),
                    };
                    match next {
                        Some(n) => cur = (p, n),
                        None => match ext_url.and_then(|u| self.v.profile(u)) {
                            Some(ep) => cur = (ep, 0),
                            None => {
                                found = false;
                                break;
                            }
                        },
                    }
                }
                None => {
                    // Not unrolled: continue in the type's profile.
                    let e = &p.elements[ei];
                    if name == "url" && e.types.iter().any(|t| t.code == "Extension") {
                        // Extension slice: the url is the extension's canonical.
                        let u = e.types.iter().find_map(|t| t.profiles.first());
                        return CachedDisc {
                            segs: owned(&segs),
                            target: Target::ExtUrl(u.map(|u| strip_version(u).to_string())),
                        };
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
                        None => {
                            found = false;
                            break;
                        }
                    }
                }
            }
        }
        if !found {
            return CachedDisc {
                segs: owned(&segs),
                target: Target::Missing,
            };
        }
        CachedDisc {
            segs: owned(&segs),
            target: Target::Elem(cur.0, cur.1, resolved),
        }
    }

    fn discriminator(
        &mut self,
        prof: &Arc<Profile>,
        s: usize,
        x: &Val<'v>,
        kind: DiscKind,
        path: &str,
        di: usize,
    ) -> bool {
        let key = (Arc::as_ptr(prof) as usize, s, di);
        let c = match self.disc_cache.get(&key) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(self.disc_target(prof, s, path));
                self.disc_cache.insert(key, c.clone());
                c
            }
        };
        let segs: Vec<&str> = c.segs.iter().map(String::as_str).collect();
        let (p, ei, resolved) = match &c.target {
            Target::Missing => return false,
            Target::ExtUrl(u) => {
                return match u {
                    Some(u) => x_values(self, x, &segs)
                        .iter()
                        .any(|v| v.as_str() == Some(u.as_str())),
                    None => false,
                }
            }
            Target::Elem(p, ei, resolved) => (p.clone(), *ei, *resolved),
        };
        let e = &p.elements[ei];
        let actual = x_values(self, x, &segs);
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
                let types: Vec<String> = e
                    .types
                    .iter()
                    .map(|t| type_name_of(&t.code).to_string())
                    .collect();
                if segs.is_empty() {
                    return types.iter().any(|t| t.eq_ignore_ascii_case(&x.type_code));
                }
                actual.iter().any(|v| {
                    let t = v.get("resourceType").and_then(Value::as_str).unwrap_or("");
                    types.iter().any(|x| x == t)
                })
            }
            DiscKind::Profile => {
                let urls: Vec<String> = e
                    .types
                    .iter()
                    .flat_map(|t| {
                        if resolved {
                            t.target_profiles.clone()
                        } else {
                            t.profiles.clone()
                        }
                    })
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
        let t = v.get("resourceType").and_then(Value::as_str);
        if let Some(t) = t {
            if t != p.type_name {
                return false;
            }
            let declared = v
                .pointer("/meta/profile")
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
        let mut sub = Walk::new(self.v, self.root);
        sub.depth = self.depth + 1;
        sub.full_urls = self.full_urls.clone();
        let tn = p.type_name.clone();
        sub.element(&p, 0, v, &tn, "", v);
        !sub.issues
            .iter()
            .any(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
    }
}

/// Collects every string value starting with `#` below `v`.
fn local_refs<'v>(v: &'v Value, out: &mut std::collections::HashSet<&'v str>) {
    match v {
        Value::String(s) if s.starts_with('#') => {
            out.insert(s.as_str());
        }
        Value::Array(a) => a.iter().for_each(|x| local_refs(x, out)),
        Value::Object(o) => o.values().for_each(|x| local_refs(x, out)),
        _ => {}
    }
}

/// dom-3: each contained resource is referenced from the resource (`#id`) or refers to its
/// container (`#`).
fn contained_all_referenced(res: &Value) -> bool {
    let Some(contained) = res.get("contained").and_then(Value::as_array) else {
        return true;
    };
    let mut refs = std::collections::HashSet::new();
    local_refs(res, &mut refs);
    contained.iter().all(|c| {
        let Some(id) = c.get("id").and_then(Value::as_str) else {
            return true;
        };
        if refs.contains(format!("#{id}").as_str()) {
            return true;
        }
        let mut inner = std::collections::HashSet::new();
        local_refs(c, &mut inner);
        inner.contains("#")
    })
}

/// The instance values at a discriminator path.
fn x_values<'v>(w: &Walk<'_, 'v>, x: &Val<'v>, segs: &[&str]) -> Vec<&'v Value> {
    let mut cur: Vec<&'v Value> = vec![x.value];
    for seg in segs {
        let mut next = Vec::new();
        for v in cur {
            if *seg == "resolve()" {
                if let Some((_, Some(r))) = w.reference_type(v) {
                    next.push(r);
                }
                continue;
            }
            if let Some(t) = quoted_arg(seg, "ofType") {
                if v.get("resourceType")
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
                    if e.get("url").and_then(Value::as_str) == Some(u) {
                        next.push(e);
                    }
                }
                continue;
            }
            match o.get(*seg) {
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

fn push_values<'v>(
    out: &mut Vec<Val<'v>>,
    v: &'v Value,
    ext: Option<&'v Value>,
    t: &str,
    loc: &str,
) {
    match v {
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                out.push(Val {
                    value: item,
                    type_code: t.to_string(),
                    loc: format!("{loc}[{i}]"),
                });
            }
            // Extension-only entries of a primitive array beyond the values.
            if let Some(Value::Array(ea)) = ext {
                for i in a.len()..ea.len() {
                    out.push(Val {
                        value: &NULL,
                        type_code: t.to_string(),
                        loc: format!("{loc}[{i}]"),
                    });
                }
            }
        }
        Value::Null => {
            if let Some(Value::Array(ea)) = ext {
                for i in 0..ea.len() {
                    out.push(Val {
                        value: &NULL,
                        type_code: t.to_string(),
                        loc: format!("{loc}[{i}]"),
                    });
                }
            } else if ext.is_some() {
                out.push(Val {
                    value: &NULL,
                    type_code: t.to_string(),
                    loc: loc.to_string(),
                });
            }
        }
        _ => out.push(Val {
            value: v,
            type_code: t.to_string(),
            loc: loc.to_string(),
        }),
    }
}
