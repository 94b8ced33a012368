//! Search parameter definitions (SearchParameter resources).

use crate::raw::RawSearchParameter;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// SearchParameter.type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SearchParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl SearchParamType {
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "number" => SearchParamType::Number,
            "date" => SearchParamType::Date,
            "string" => SearchParamType::String,
            "token" => SearchParamType::Token,
            "reference" => SearchParamType::Reference,
            "composite" => SearchParamType::Composite,
            "quantity" => SearchParamType::Quantity,
            "uri" => SearchParamType::Uri,
            "special" => SearchParamType::Special,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SearchParamType::Number => "number",
            SearchParamType::Date => "date",
            SearchParamType::String => "string",
            SearchParamType::Token => "token",
            SearchParamType::Reference => "reference",
            SearchParamType::Composite => "composite",
            SearchParamType::Quantity => "quantity",
            SearchParamType::Uri => "uri",
            SearchParamType::Special => "special",
        }
    }

    /// The modifiers the FHIR R4 search page allows for this type (besides `:missing`,
    /// which all types allow, and the `:[type]` modifier of references).
    pub fn default_modifiers(self) -> &'static [&'static str] {
        match self {
            SearchParamType::String => &["missing", "exact", "contains"],
            SearchParamType::Token => &[
                "missing", "text", "not", "above", "below", "in", "not-in", "of-type",
            ],
            SearchParamType::Reference => &["missing", "identifier", "above", "below"],
            SearchParamType::Uri => &["missing", "above", "below"],
            _ => &["missing"],
        }
    }
}

/// A search parameter definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParamDef {
    pub url: String,
    pub code: String,
    /// Resource types (or "Resource"/"DomainResource") the parameter applies to.
    pub base: Vec<String>,
    pub kind: SearchParamType,
    /// The full FHIRPath from the definition (may cover several bases; see [`SearchParamDef::expression_for`]).
    pub expression: Option<String>,
    /// Allowed target resource types of reference parameters.
    pub target: Vec<String>,
    /// Modifiers listed in the definition (none of the R4 core parameters list any;
    /// see [`SearchParamType::default_modifiers`]).
    pub modifiers: Vec<String>,
    /// Comparators listed in the definition ("eq", "ne", "gt", …).
    pub comparators: Vec<String>,
    /// Composite parts: (definition url, expression relative to the composite's match).
    pub components: Vec<(String, String)>,
    /// Chain names allowed (SearchParameter.chain).
    pub chains: Vec<String>,
    pub multiple_or: bool,
    pub multiple_and: bool,
}

impl SearchParamDef {
    /// Keeps only the top-level `|`-separated parts of the expression that apply to
    /// `resource_type`: parts starting with that type or with Resource/DomainResource,
    /// and parts that start with no type name at all (relative paths such as `name`).
    /// `None` when there is no expression or no part applies.
    ///
    /// ```
    /// let m = iryo_fhir_spec::r4();
    /// let p = m.search_param("Observation", "patient").unwrap();
    /// assert_eq!(p.expression_for("Observation").as_deref(), Some("Observation.subject.where(resolve() is Patient)"));
    /// ```
    pub fn expression_for(&self, resource_type: &str) -> Option<String> {
        let expr = self.expression.as_deref()?;
        let parts: Vec<&str> = split_top_level_union(expr)
            .into_iter()
            .filter(|part| {
                let head = head_identifier(part);
                // Parts not starting with a type name ("name | alias") are relative to the resource.
                !head.starts_with(|c: char| c.is_ascii_uppercase())
                    || head == resource_type
                    || head == "Resource"
                    || head == "DomainResource"
            })
            .collect();
        if parts.is_empty() {
            None
        } else {
            Some(parts.join(" | "))
        }
    }

    /// The modifiers this parameter accepts: those listed in the definition, or the
    /// defaults of its type.
    pub fn allowed_modifiers(&self) -> Vec<&str> {
        if self.modifiers.is_empty() {
            self.kind.default_modifiers().to_vec()
        } else {
            self.modifiers.iter().map(String::as_str).collect()
        }
    }
}

/// Splits a FHIRPath expression at `|` operators that are not nested in
/// parentheses/brackets/braces, string literals or delimited identifiers. Parts are trimmed.
pub fn split_top_level_union(expr: &str) -> Vec<&str> {
    let bytes = expr.as_bytes();
    let mut parts = Vec::new();
    let mut depth: i32 = 0;
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'`' | b'"') => {
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b'|' if depth == 0 => {
                parts.push(expr[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(expr[start.min(expr.len())..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

/// The first identifier of an expression part, skipping opening parentheses.
fn head_identifier(part: &str) -> &str {
    let p = part.trim_start_matches(|c: char| c == '(' || c.is_whitespace());
    let end = p
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(p.len());
    &p[..end]
}

pub(crate) fn parse_search_parameter(v: &serde_json::Value) -> Result<SearchParamDef, String> {
    let raw = RawSearchParameter::deserialize(v).map_err(|e| e.to_string())?;
    convert(raw)
}

pub(crate) fn convert(raw: RawSearchParameter) -> Result<SearchParamDef, String> {
    if raw.resource_type != "SearchParameter" {
        return Err(format!(
            "resourceType is '{}', expected 'SearchParameter'",
            raw.resource_type
        ));
    }
    let code = raw.code.filter(|c| !c.is_empty()).ok_or("missing code")?;
    if raw.base.is_empty() {
        return Err(format!("{code}: missing base"));
    }
    let type_code = raw.type_.ok_or_else(|| format!("{code}: missing type"))?;
    let kind = SearchParamType::from_code(&type_code)
        .ok_or_else(|| format!("{code}: unknown type '{type_code}'"))?;
    Ok(SearchParamDef {
        url: raw.url,
        code,
        base: raw.base,
        kind,
        expression: raw.expression.filter(|e| !e.trim().is_empty()),
        target: raw.target,
        modifiers: raw.modifier,
        comparators: raw.comparator,
        components: raw
            .component
            .into_iter()
            .map(|c| (c.definition, c.expression))
            .collect(),
        chains: raw.chain,
        multiple_or: raw.multiple_or.unwrap_or(true),
        multiple_and: raw.multiple_and.unwrap_or(true),
    })
}

/// Parameters with an index base → code → parameter.
#[derive(Debug, Clone, Default)]
pub(crate) struct SearchIndex {
    pub params: Vec<SearchParamDef>,
    pub by_base: HashMap<String, BTreeMap<String, usize>>,
}

impl SearchIndex {
    pub(crate) fn add(&mut self, p: SearchParamDef) {
        let idx = self.params.len();
        for b in &p.base {
            self.by_base
                .entry(b.clone())
                .or_default()
                .insert(p.code.clone(), idx);
        }
        self.params.push(p);
    }

    /// Drops parameters no base refers to any more (after replacements).
    pub(crate) fn compact(&mut self) {
        let mut used = vec![false; self.params.len()];
        for m in self.by_base.values() {
            for &i in m.values() {
                used[i] = true;
            }
        }
        if used.iter().all(|&u| u) {
            return;
        }
        let mut remap = vec![usize::MAX; self.params.len()];
        let mut kept = Vec::with_capacity(self.params.len());
        for (i, p) in std::mem::take(&mut self.params).into_iter().enumerate() {
            if used[i] {
                remap[i] = kept.len();
                kept.push(p);
            }
        }
        self.params = kept;
        for m in self.by_base.values_mut() {
            for i in m.values_mut() {
                *i = remap[*i];
            }
        }
    }
}
