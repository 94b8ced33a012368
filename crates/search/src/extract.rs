//! Index extraction: evaluate each SearchParameter's FHIRPath expression on a resource and turn
//! the resulting elements into [`IndexEntry`] rows according to the parameter type.

use crate::date::{parse_range, MAX_MS, MIN_MS};
use crate::index::{IndexEntry, IndexValue};
use crate::normalize::normalize_string;
use iryo_fhir_spec::{Model, SearchParamType};
use iryo_fhirpath::{Context, Expression, Item};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A compiled search parameter of one resource type.
struct Compiled {
    code: String,
    kind: SearchParamType,
    expr: Expression,
}

/// Extracts index entries; caches compiled expressions per resource type. Cheap to share (`Arc`).
pub struct Extractor {
    model: &'static Model,
    cache: RwLock<HashMap<String, Arc<Vec<Compiled>>>>,
}

impl Extractor {
    pub fn new(model: &'static Model) -> Self {
        Extractor {
            model,
            cache: RwLock::new(HashMap::new()),
        }
    }

    pub fn model(&self) -> &'static Model {
        self.model
    }

    fn compiled(&self, ty: &str) -> Arc<Vec<Compiled>> {
        if let Some(c) = self.cache.read().ok().and_then(|m| m.get(ty).cloned()) {
            return c;
        }
        let mut out = vec![];
        for p in self.model.search_params(ty) {
            if matches!(
                p.kind,
                SearchParamType::Composite | SearchParamType::Special
            ) {
                continue;
            }
            // _id and _lastUpdated live in the resource table itself.
            if p.code == "_id" || p.code == "_lastUpdated" {
                continue;
            }
            let Some(src) = p.expression_for(ty) else {
                continue;
            };
            match iryo_fhirpath::parse(&src) {
                Ok(expr) => out.push(Compiled {
                    code: p.code.clone(),
                    kind: p.kind,
                    expr,
                }),
                Err(e) => tracing_note(&p.code, &src, &e.to_string()),
            }
        }
        let arc = Arc::new(out);
        if let Ok(mut m) = self.cache.write() {
            m.insert(ty.to_string(), arc.clone());
        }
        arc
    }

    /// All index entries of `resource` (deduplicated).
    pub fn extract(&self, resource: &Value) -> Vec<IndexEntry> {
        self.extract_where(resource, |_| true)
    }

    /// The index entries of one search parameter only (`_include` needs just its references).
    pub fn extract_param(&self, resource: &Value, code: &str) -> Vec<IndexEntry> {
        self.extract_where(resource, |c| c == code)
    }

    fn extract_where(&self, resource: &Value, keep: impl Fn(&str) -> bool) -> Vec<IndexEntry> {
        let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
            return vec![];
        };
        let compiled = self.compiled(ty);
        let ctx = Context::new(resource);
        let mut out: Vec<IndexEntry> = Vec::with_capacity(32);
        for c in compiled.iter().filter(|c| keep(&c.code)) {
            let Ok(items) = c.expr.evaluate(&ctx, resource) else {
                continue;
            };
            for item in &items {
                index_item(&c.code, c.kind, item, &mut out);
            }
        }
        dedup(&mut out);
        out
    }
}

fn tracing_note(code: &str, src: &str, e: &str) {
    // Parameters whose expression cannot be compiled are not indexed; searching them is refused
    // by the REST layer as unsupported. This is reported once per type at first use.
    eprintln!("iryo-search: search parameter {code} not indexed: cannot compile '{src}': {e}");
}

fn dedup(v: &mut Vec<IndexEntry>) {
    let mut seen: Vec<IndexEntry> = Vec::with_capacity(v.len());
    for e in v.drain(..) {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    *v = seen;
}

/// One-shot extraction with the R4 model (compiles expressions each call: use [`Extractor`] in servers).
pub fn extract(resource: &Value) -> Vec<IndexEntry> {
    Extractor::new(crate::model()).extract(resource)
}

fn push(out: &mut Vec<IndexEntry>, code: &str, value: IndexValue) {
    out.push(IndexEntry {
        param: code.to_string(),
        value,
    });
}

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn push_string(out: &mut Vec<IndexEntry>, code: &str, text: &str) {
    if text.is_empty() {
        return;
    }
    push(
        out,
        code,
        IndexValue::String {
            norm: normalize_string(text),
            exact: text.to_string(),
        },
    );
}

fn push_token(out: &mut Vec<IndexEntry>, code: &str, system: &str, value: &str) {
    push(
        out,
        code,
        IndexValue::Token {
            system: system.to_string(),
            code: value.to_string(),
        },
    );
}

fn number_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn index_item(code: &str, kind: SearchParamType, item: &Item<'_>, out: &mut Vec<IndexEntry>) {
    use SearchParamType as K;
    let (node, ty): (Option<&Value>, &str) = match item {
        Item::Node {
            value, type_code, ..
        } => (Some(*value), type_code.as_ref()),
        Item::String(sv) => {
            match kind {
                K::String => push_string(out, code, sv),
                K::Token => push_token(out, code, "", sv),
                K::Uri => push(out, code, IndexValue::Uri { value: sv.clone() }),
                K::Reference => index_reference_str(code, sv, out),
                K::Date => {
                    if let Some(r) = parse_range(sv) {
                        push(out, code, IndexValue::Date { lo: r.lo, hi: r.hi })
                    }
                }
                _ => {}
            }
            return;
        }
        Item::Boolean(b) => {
            if kind == K::Token {
                push_token(out, code, "", if *b { "true" } else { "false" });
            }
            return;
        }
        Item::Integer(i) => {
            if kind == K::Number {
                let f = *i as f64;
                push(out, code, IndexValue::Number { lo: f, hi: f });
            } else if kind == K::Token {
                push_token(out, code, "", &i.to_string());
            }
            return;
        }
        _ => return,
    };
    let Some(v) = node else { return };
    match kind {
        K::String => match v {
            Value::String(t) => push_string(out, code, t),
            Value::Object(_) if ty == "HumanName" => {
                for k in ["family", "text"] {
                    if let Some(t) = s(v, k) {
                        push_string(out, code, t);
                    }
                }
                for k in ["given", "prefix", "suffix"] {
                    if let Some(arr) = v.get(k).and_then(Value::as_array) {
                        for t in arr.iter().filter_map(Value::as_str) {
                            push_string(out, code, t);
                        }
                    }
                }
            }
            Value::Object(_) if ty == "Address" => {
                for k in ["text", "city", "district", "state", "postalCode", "country"] {
                    if let Some(t) = s(v, k) {
                        push_string(out, code, t);
                    }
                }
                if let Some(arr) = v.get("line").and_then(Value::as_array) {
                    for t in arr.iter().filter_map(Value::as_str) {
                        push_string(out, code, t);
                    }
                }
            }
            _ => {}
        },
        K::Token => index_token(code, ty, v, out),
        K::Date => index_date(code, ty, v, out),
        K::Number => {
            if let Some(f) = number_of(v) {
                push(out, code, IndexValue::Number { lo: f, hi: f });
            }
        }
        K::Quantity => index_quantity(code, ty, v, out),
        K::Reference => match v {
            Value::String(t) => index_reference_str(code, t, out),
            Value::Object(_) => {
                if let Some(r) = s(v, "reference") {
                    index_reference_str(code, r, out);
                }
                if let Some(id) = v.get("identifier") {
                    let key = format!("{code}:identifier");
                    push_token(
                        out,
                        &key,
                        s(id, "system").unwrap_or(""),
                        s(id, "value").unwrap_or(""),
                    );
                }
                if let Some(t) = s(v, "display") {
                    push_string(out, &format!("{code}:text"), t);
                }
            }
            _ => {}
        },
        K::Uri => {
            if let Value::String(t) = v {
                push(out, code, IndexValue::Uri { value: t.clone() });
            }
        }
        K::Composite | K::Special => {}
    }
}

fn index_reference_str(code: &str, r: &str, out: &mut Vec<IndexEntry>) {
    if r.starts_with('#') || r.is_empty() {
        return;
    }
    let r = r.split('|').next().unwrap_or(r);
    // strip /_history/n
    let base = match r.find("/_history/") {
        Some(i) => &r[..i],
        None => r,
    };
    let segs: Vec<&str> = base.rsplitn(3, '/').collect();
    if !base.contains("://") && !base.starts_with("urn:") && segs.len() == 2 {
        push(
            out,
            code,
            IndexValue::Reference {
                ty: segs[1].to_string(),
                id: segs[0].to_string(),
            },
        );
        return;
    }
    // absolute URL: keep it whole, and also as Type/id when it has that tail
    push(
        out,
        code,
        IndexValue::Reference {
            ty: String::new(),
            id: base.to_string(),
        },
    );
    if base.contains("://")
        && segs.len() == 3
        && segs[1].starts_with(|c: char| c.is_ascii_uppercase())
    {
        push(
            out,
            code,
            IndexValue::Reference {
                ty: segs[1].to_string(),
                id: segs[0].to_string(),
            },
        );
    }
}

fn index_coding(code: &str, c: &Value, out: &mut Vec<IndexEntry>) {
    let sys = s(c, "system").unwrap_or("");
    if let Some(cd) = s(c, "code") {
        push_token(out, code, sys, cd);
    }
    if let Some(d) = s(c, "display") {
        push_string(out, &format!("{code}:text"), d);
    }
}

fn index_token(code: &str, ty: &str, v: &Value, out: &mut Vec<IndexEntry>) {
    match v {
        Value::String(t) => push_token(out, code, "", t),
        Value::Bool(b) => push_token(out, code, "", if *b { "true" } else { "false" }),
        Value::Number(n) => push_token(out, code, "", &n.to_string()),
        Value::Object(_) => match ty {
            "Coding" => index_coding(code, v, out),
            "CodeableConcept" => {
                if let Some(arr) = v.get("coding").and_then(Value::as_array) {
                    for c in arr {
                        index_coding(code, c, out);
                    }
                }
                if let Some(t) = s(v, "text") {
                    push_string(out, &format!("{code}:text"), t);
                }
            }
            "Identifier" => {
                if let Some(val) = s(v, "value") {
                    push_token(out, code, s(v, "system").unwrap_or(""), val);
                    if let Some(codings) = v
                        .get("type")
                        .and_then(|t| t.get("coding"))
                        .and_then(Value::as_array)
                    {
                        for c in codings {
                            if let Some(tc) = s(c, "code") {
                                let sys = s(c, "system").unwrap_or("");
                                push_token(
                                    out,
                                    &format!("{code}:of-type"),
                                    sys,
                                    &format!("{tc}|{val}"),
                                );
                            }
                        }
                    }
                }
                if let Some(t) = v.get("type").and_then(|t| s(t, "text")) {
                    push_string(out, &format!("{code}:text"), t);
                }
            }
            "ContactPoint" => {
                if let Some(val) = s(v, "value") {
                    push_token(out, code, s(v, "system").unwrap_or(""), val);
                }
            }
            _ => {
                // Other complex types used as tokens: take system/code or value when present.
                if let Some(cd) = s(v, "code").or_else(|| s(v, "value")) {
                    push_token(out, code, s(v, "system").unwrap_or(""), cd);
                }
            }
        },
        _ => {}
    }
}

fn index_date(code: &str, ty: &str, v: &Value, out: &mut Vec<IndexEntry>) {
    match v {
        Value::String(t) => {
            if let Some(r) = parse_range(t) {
                push(out, code, IndexValue::Date { lo: r.lo, hi: r.hi });
            }
        }
        Value::Object(_) if ty == "Period" => {
            let lo = s(v, "start").and_then(parse_range).map(|r| r.lo);
            let hi = s(v, "end").and_then(parse_range).map(|r| r.hi);
            if lo.is_some() || hi.is_some() {
                push(
                    out,
                    code,
                    IndexValue::Date {
                        lo: lo.unwrap_or(MIN_MS),
                        hi: hi.unwrap_or(MAX_MS),
                    },
                );
            }
        }
        Value::Object(_) if ty == "Timing" => {
            if let Some(ev) = v.get("event").and_then(Value::as_array) {
                let rs: Vec<_> = ev
                    .iter()
                    .filter_map(Value::as_str)
                    .filter_map(parse_range)
                    .collect();
                if let (Some(lo), Some(hi)) =
                    (rs.iter().map(|r| r.lo).min(), rs.iter().map(|r| r.hi).max())
                {
                    push(out, code, IndexValue::Date { lo, hi });
                }
            }
            if let Some(b) = v.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                index_date(code, "Period", b, out);
            }
        }
        _ => {}
    }
}

fn index_quantity(code: &str, ty: &str, v: &Value, out: &mut Vec<IndexEntry>) {
    match ty {
        "Range" => {
            let lo = v
                .get("low")
                .and_then(|l| l.get("value"))
                .and_then(number_of);
            let hi = v
                .get("high")
                .and_then(|l| l.get("value"))
                .and_then(number_of);
            let unit_src = v.get("low").or_else(|| v.get("high"));
            if lo.is_some() || hi.is_some() {
                let u = unit_src.unwrap_or(v);
                push(
                    out,
                    code,
                    IndexValue::Quantity {
                        system: s(u, "system").unwrap_or("").to_string(),
                        code: s(u, "code").unwrap_or("").to_string(),
                        unit: s(u, "unit").unwrap_or("").to_string(),
                        lo: lo.unwrap_or(f64::MIN),
                        hi: hi.unwrap_or(f64::MAX),
                    },
                );
            }
        }
        "Money" => {
            if let Some(f) = v.get("value").and_then(number_of) {
                push(
                    out,
                    code,
                    IndexValue::Quantity {
                        system: "urn:iso:std:iso:4217".into(),
                        code: s(v, "currency").unwrap_or("").to_string(),
                        unit: String::new(),
                        lo: f,
                        hi: f,
                    },
                );
            }
        }
        _ => {
            if let Some(f) = v.get("value").and_then(number_of) {
                push(
                    out,
                    code,
                    IndexValue::Quantity {
                        system: s(v, "system").unwrap_or("").to_string(),
                        code: s(v, "code").unwrap_or("").to_string(),
                        unit: s(v, "unit").unwrap_or("").to_string(),
                        lo: f,
                        hi: f,
                    },
                );
            } else if let Some(f) = number_of(v) {
                push(
                    out,
                    code,
                    IndexValue::Quantity {
                        system: String::new(),
                        code: String::new(),
                        unit: String::new(),
                        lo: f,
                        hi: f,
                    },
                );
            }
        }
    }
}
