//! Parsing FHIR search requests (`name=yamada&birthdate=ge1980&_sort=-date…`) into a [`SearchQuery`].
//!
//! Every value is parsed here, once: prefixes, precision ranges of numbers and dates, token
//! `system|code`, reference `Type/id`, escapes (`\,` `\|` `\$`). The store turns the result into SQL.

use crate::date::{parse_range, DateRange};
use iryo_fhir_spec::{Model, SearchParamType};
use percent_encoding::percent_decode_str;

/// How to treat unknown or unsupported parameters (`Prefer: handling=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    Strict,
    Lenient,
}

/// A parse error: the parameter and what is wrong, in Japanese and English.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryError {
    pub param: String,
    pub message_ja: String,
    pub message_en: String,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.param, self.message_en)
    }
}
impl std::error::Error for QueryError {}

fn err(param: &str, ja: impl Into<String>, en: impl Into<String>) -> QueryError {
    QueryError {
        param: param.to_string(),
        message_ja: ja.into(),
        message_en: en.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Modifier {
    None,
    Exact,
    Contains,
    Missing,
    Not,
    Text,
    Identifier,
    OfType,
    Above,
    Below,
    In,
    NotIn,
    /// `subject:Patient=123`
    Type(String),
}

/// One value of a parameter (several are ORed).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number {
        prefix: Prefix,
        lo: f64,
        hi: f64,
        value: f64,
    },
    Date {
        prefix: Prefix,
        range: DateRange,
    },
    String(String),
    /// `system`: None = any system; Some("") = no system (`|code`). `code`: None = any code (`system|`).
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    /// `:of-type` on identifiers: type system|code|value.
    OfType {
        system: String,
        code: String,
        value: String,
    },
    /// `ty` None when given as a bare id and the parameter has several target types.
    Reference {
        ty: Option<String>,
        id: String,
    },
    /// An absolute URL or canonical reference.
    Url(String),
    Quantity {
        prefix: Prefix,
        lo: f64,
        hi: f64,
        value: f64,
        system: Option<String>,
        code: Option<String>,
    },
    Uri(String),
    Missing(bool),
    /// Composite: one value per component, in component order.
    Composite(Vec<Value>),
}

/// A condition on the resources searched. All clauses of a query are ANDed.
#[derive(Debug, Clone, PartialEq)]
pub enum Clause {
    /// A parameter of the current type; its values are ORed.
    Param {
        code: String,
        kind: SearchParamType,
        modifier: Modifier,
        values: Vec<Value>,
        /// For composites: component param codes and kinds.
        components: Vec<(String, SearchParamType)>,
    },
    /// `ref:Type.inner`: resources whose reference `ref` points at a `Type` matching `inner`.
    Chain {
        ref_code: String,
        target_types: Vec<String>,
        inner: Box<Clause>,
    },
    /// `_has:Source:ref:inner`: resources pointed at by a `Source`'s `ref` that matches `inner`.
    Has {
        source_type: String,
        ref_code: String,
        inner: Box<Clause>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub code: String,
    pub kind: SearchParamType,
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    /// `*` for all reference parameters.
    pub source_type: String,
    pub param: String,
    pub target_type: Option<String>,
    pub iterate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Estimate,
    Accurate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    Text,
    Data,
    Count,
    False,
}

/// A parsed search request.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// None for a system-level search (`GET [base]?…`).
    pub resource_type: Option<String>,
    /// A system-level search limited to these types (`_type=Patient,Observation`); empty: all.
    pub types: Vec<String>,
    pub clauses: Vec<Clause>,
    pub sort: Vec<SortKey>,
    pub count: Option<usize>,
    pub offset: usize,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    pub total: Option<Total>,
    pub summary: Option<Summary>,
    pub elements: Vec<String>,
    /// Parameters ignored under lenient handling, with the reason (reported back in the Bundle).
    pub ignored: Vec<(String, String)>,
    /// The `(name, value)` pairs that were understood, for self links.
    pub understood: Vec<(String, String)>,
    /// Parameters that the REST layer consumes (`_format`, `_pretty`, `_page`…).
    pub page_token: Option<String>,
}

/// Split a query string into decoded `(name, value)` pairs (`+` is a space, as in forms).
pub fn split_query(qs: &str) -> Vec<(String, String)> {
    qs.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(n), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_decode_str(&s).decode_utf8_lossy().into_owned()
}

/// Parameters the REST layer handles itself; search ignores them silently.
const REST_PARAMS: &[&str] = &["_format", "_pretty", "_page", "_method"];

/// Parse a search query for `resource_type` (None: all types).
pub fn parse_query(
    model: &Model,
    resource_type: Option<&str>,
    qs: &str,
    handling: Handling,
) -> Result<SearchQuery, QueryError> {
    parse_pairs(model, resource_type, &split_query(qs), handling)
}

/// Parse already split `(name, value)` pairs (from GET query or POST `_search` form body).
pub fn parse_pairs(
    model: &Model,
    resource_type: Option<&str>,
    pairs: &[(String, String)],
    handling: Handling,
) -> Result<SearchQuery, QueryError> {
    let mut q = SearchQuery {
        resource_type: resource_type.map(str::to_string),
        types: vec![],
        clauses: vec![],
        sort: vec![],
        count: None,
        offset: 0,
        includes: vec![],
        revincludes: vec![],
        total: None,
        summary: None,
        elements: vec![],
        ignored: vec![],
        understood: vec![],
        page_token: None,
    };
    let ty = resource_type.unwrap_or("Resource");
    for (name, value) in pairs {
        let name = name.trim();
        let res = parse_one(model, ty, name, value, &mut q);
        match res {
            Ok(true) => q.understood.push((name.to_string(), value.clone())),
            Ok(false) => {}
            Err(e) => {
                if handling == Handling::Lenient && e.message_en.starts_with(UNKNOWN) {
                    q.ignored.push((name.to_string(), e.message_ja.clone()));
                } else {
                    return Err(e);
                }
            }
        }
    }
    Ok(q)
}

const UNKNOWN: &str = "Unknown or unsupported";

fn unknown(name: &str, ty: &str) -> QueryError {
    err(
        name,
        format!("検索パラメータ {name} は {ty} では使えません（未知または未対応）"),
        format!("{UNKNOWN} search parameter '{name}' for {ty}"),
    )
}

/// Returns Ok(true) when understood and kept, Ok(false) when consumed silently.
fn parse_one(
    model: &Model,
    ty: &str,
    name: &str,
    value: &str,
    q: &mut SearchQuery,
) -> Result<bool, QueryError> {
    match name {
        n if REST_PARAMS.contains(&n) => {
            if n == "_page" {
                q.page_token = Some(value.to_string());
            }
            return Ok(false);
        }
        "_count" => {
            let n: usize = value.parse().map_err(|_| {
                err(
                    name,
                    "_count は 0 以上の整数です",
                    "_count must be a non-negative integer",
                )
            })?;
            q.count = Some(n);
            return Ok(true);
        }
        "_offset" => {
            q.offset = value.parse().map_err(|_| {
                err(
                    name,
                    "_offset は 0 以上の整数です",
                    "_offset must be a non-negative integer",
                )
            })?;
            return Ok(true);
        }
        "_sort" => {
            for key in value.split(',').filter(|k| !k.is_empty()) {
                let (desc, code) = match key.strip_prefix('-') {
                    Some(c) => (true, c),
                    None => (false, key),
                };
                let kind = match code {
                    "_id" => SearchParamType::Token,
                    "_lastUpdated" => SearchParamType::Date,
                    _ => model
                        .search_param(ty, code)
                        .map(|p| p.kind)
                        .ok_or_else(|| unknown(&format!("_sort={code}"), ty))?,
                };
                q.sort.push(SortKey {
                    code: code.to_string(),
                    kind,
                    descending: desc,
                });
            }
            return Ok(true);
        }
        "_total" => {
            q.total = Some(match value {
                "none" => Total::None,
                "estimate" => Total::Estimate,
                "accurate" => Total::Accurate,
                _ => {
                    return Err(err(
                        name,
                        "_total は none/estimate/accurate のいずれかです",
                        "_total must be none, estimate or accurate",
                    ))
                }
            });
            return Ok(true);
        }
        "_summary" => {
            q.summary = Some(match value {
                "true" => Summary::True,
                "text" => Summary::Text,
                "data" => Summary::Data,
                "count" => Summary::Count,
                "false" => Summary::False,
                _ => {
                    return Err(err(
                        name,
                        "_summary は true/text/data/count/false のいずれかです",
                        "_summary must be true, text, data, count or false",
                    ))
                }
            });
            return Ok(true);
        }
        "_elements" => {
            q.elements.extend(
                value
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            );
            return Ok(true);
        }
        _ => {}
    }
    if let Some(modifier) = name
        .strip_prefix("_include")
        .or_else(|| name.strip_prefix("_revinclude").map(|m| m))
    {
        let rev = name.starts_with("_revinclude");
        let iterate = match modifier {
            "" => false,
            ":iterate" | ":recurse" => true,
            _ => return Err(unknown(name, ty)),
        };
        let inc = parse_include(model, name, value, iterate)?;
        if rev {
            q.revincludes.push(inc);
        } else {
            q.includes.push(inc);
        }
        return Ok(true);
    }
    let clause = parse_clause(model, ty, name, value, 0)?;
    q.clauses.push(clause);
    Ok(true)
}

fn parse_include(
    model: &Model,
    name: &str,
    value: &str,
    iterate: bool,
) -> Result<Include, QueryError> {
    let mut parts = value.split(':');
    let source = parts.next().unwrap_or("");
    let param = parts.next().unwrap_or("");
    let target = parts.next().map(str::to_string);
    if !model.is_resource_type(source) || param.is_empty() {
        return Err(err(
            name,
            format!("{name} の値 '{value}' は 型:パラメータ[:対象型] の形ではありません"),
            format!("{name} value '{value}' must be Type:param[:TargetType]"),
        ));
    }
    if param != "*" {
        let def = model
            .search_param(source, param)
            .ok_or_else(|| unknown(&format!("{name}={value}"), source))?;
        if def.kind != SearchParamType::Reference {
            return Err(err(
                name,
                format!("{source}:{param} は参照型の検索パラメータではありません"),
                format!("{source}:{param} is not a reference search parameter"),
            ));
        }
    }
    if let Some(t) = &target {
        if !model.is_resource_type(t) {
            return Err(unknown(&format!("{name}={value}"), source));
        }
    }
    Ok(Include {
        source_type: source.to_string(),
        param: param.to_string(),
        target_type: target,
        iterate,
    })
}

const MAX_DEPTH: usize = 4;

fn parse_clause(
    model: &Model,
    ty: &str,
    name: &str,
    value: &str,
    depth: usize,
) -> Result<Clause, QueryError> {
    if depth > MAX_DEPTH {
        return Err(err(
            name,
            "チェーンが深すぎます（最大4段）",
            "chain too deep (at most 4 levels)",
        ));
    }
    // reverse chaining: _has:Type:ref:rest
    if let Some(rest) = name.strip_prefix("_has:") {
        let mut it = rest.splitn(3, ':');
        let (src, refc, inner) = (it.next(), it.next(), it.next());
        let (Some(src), Some(refc), Some(inner)) = (src, refc, inner) else {
            return Err(err(
                name,
                "_has は _has:型:参照パラメータ:パラメータ の形です",
                "_has must be _has:Type:reference-param:param",
            ));
        };
        if !model.is_resource_type(src) {
            return Err(unknown(name, ty));
        }
        let def = model
            .search_param(src, refc)
            .ok_or_else(|| unknown(name, src))?;
        if def.kind != SearchParamType::Reference {
            return Err(unknown(name, src));
        }
        let inner = parse_clause(model, src, inner, value, depth + 1)?;
        return Ok(Clause::Has {
            source_type: src.to_string(),
            ref_code: refc.to_string(),
            inner: Box::new(inner),
        });
    }
    // chaining: ref[:Type].rest
    if let Some(dot) = chain_dot(name) {
        let (head, rest) = (&name[..dot], &name[dot + 1..]);
        let (code, typ) = match head.split_once(':') {
            Some((c, t)) => (c, Some(t)),
            None => (head, None),
        };
        let def = model
            .search_param(ty, code)
            .ok_or_else(|| unknown(name, ty))?;
        if def.kind != SearchParamType::Reference {
            return Err(err(
                name,
                format!("{code} は参照型ではないためチェーンできません"),
                format!("{code} is not a reference parameter and cannot be chained"),
            ));
        }
        let targets: Vec<String> = match typ {
            Some(t) => {
                if !model.is_resource_type(t) {
                    return Err(unknown(name, ty));
                }
                vec![t.to_string()]
            }
            None => {
                let rest_code = rest.split(['.', ':']).next().unwrap_or(rest);
                def.target
                    .iter()
                    .filter(|t| model.is_resource_type(t))
                    .filter(|t| {
                        rest_code.starts_with("_has") || model.search_param(t, rest_code).is_some()
                    })
                    .cloned()
                    .collect()
            }
        };
        if targets.is_empty() {
            return Err(unknown(name, ty));
        }
        // parse the inner clause against the first target that knows it; all targets must agree on kind
        let inner = parse_clause(model, &targets[0], rest, value, depth + 1)?;
        return Ok(Clause::Chain {
            ref_code: code.to_string(),
            target_types: targets,
            inner: Box::new(inner),
        });
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    let kind = match code {
        "_id" => SearchParamType::Token,
        "_lastUpdated" => SearchParamType::Date,
        _ => {
            model
                .search_param(ty, code)
                .ok_or_else(|| unknown(name, ty))?
                .kind
        }
    };
    let def = model.search_param(ty, code);
    let modifier = parse_modifier(model, name, kind, modifier)?;
    if kind == SearchParamType::Special {
        return Err(unknown(name, ty));
    }
    let mut components = vec![];
    if kind == SearchParamType::Composite {
        let def = def.ok_or_else(|| unknown(name, ty))?;
        for (url, _) in &def.components {
            let comp = model
                .search_params(ty)
                .into_iter()
                .find(|p| &p.url == url)
                .ok_or_else(|| unknown(name, ty))?;
            components.push((comp.code.clone(), comp.kind));
        }
    }
    let targets: Vec<String> = def.map(|d| d.target.clone()).unwrap_or_default();
    let mut values = vec![];
    if modifier == Modifier::Missing {
        let b = match value {
            "true" => true,
            "false" => false,
            _ => {
                return Err(err(
                    name,
                    ":missing の値は true か false です",
                    ":missing takes true or false",
                ))
            }
        };
        values.push(Value::Missing(b));
    } else {
        for raw in split_unescaped(value, ',') {
            values.push(parse_value(
                name,
                kind,
                &modifier,
                &raw,
                &targets,
                &components,
            )?);
        }
        if values.is_empty() {
            return Err(err(name, "値が空です", "empty value"));
        }
    }
    Ok(Clause::Param {
        code: code.to_string(),
        kind,
        modifier,
        values,
        components,
    })
}

/// The position of the '.' that starts a chain (not one inside a `:Type` modifier or URL value).
fn chain_dot(name: &str) -> Option<usize> {
    if name.starts_with('_') && !name.starts_with("_has") {
        return None;
    }
    name.find('.')
}

fn parse_modifier(
    model: &Model,
    name: &str,
    kind: SearchParamType,
    m: Option<&str>,
) -> Result<Modifier, QueryError> {
    use SearchParamType as K;
    let Some(m) = m else {
        return Ok(Modifier::None);
    };
    let md = match (m, kind) {
        ("missing", _) => Modifier::Missing,
        ("exact", K::String) => Modifier::Exact,
        ("contains", K::String) | ("contains", K::Uri) => Modifier::Contains,
        ("not", K::Token) => Modifier::Not,
        ("text", K::Token) | ("text", K::Reference) => Modifier::Text,
        ("of-type", K::Token) => Modifier::OfType,
        ("identifier", K::Reference) => Modifier::Identifier,
        ("above", K::Uri) => Modifier::Above,
        ("below", K::Uri) => Modifier::Below,
        (t, K::Reference) if model.is_resource_type(t) => Modifier::Type(t.to_string()),
        _ => {
            return Err(err(
                name,
                format!("修飾子 :{m} はこのパラメータでは使えません"),
                format!("{UNKNOWN} modifier ':{m}' on this parameter"),
            ))
        }
    };
    Ok(md)
}

/// Split on `sep` not preceded by a backslash, and unescape `\,` `\|` `\$` `\\`.
pub fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) if n == sep => cur.push_str(&format!("\\{n}")),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            }
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out.retain(|v| !v.is_empty());
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn split_prefix(s: &str) -> (Prefix, &str) {
    let p = match s.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, s),
    };
    (p, &s[2..])
}

/// Parse a FHIR decimal search value into (value, lo, hi) by its precision: `100` → [99.5, 100.5).
pub fn number_range(s: &str) -> Option<(f64, f64, f64)> {
    let t = s.trim();
    if t.is_empty()
        || !t
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return None;
    }
    let v: f64 = t.parse().ok()?;
    if !v.is_finite() {
        return None;
    }
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().ok()?),
        None => (t, 0),
    };
    let decimals = mantissa
        .split_once('.')
        .map(|(_, f)| f.len() as i32)
        .unwrap_or(0);
    let half = 0.5 * 10f64.powi(-(decimals - exp));
    Some((v, v - half, v + half))
}

fn parse_value(
    name: &str,
    kind: SearchParamType,
    modifier: &Modifier,
    raw: &str,
    targets: &[String],
    components: &[(String, SearchParamType)],
) -> Result<Value, QueryError> {
    use SearchParamType as K;
    let bad = |what_ja: &str, what_en: &str| {
        err(
            name,
            format!("値 '{raw}' は{what_ja}として正しくありません"),
            format!("value '{raw}' is not a valid {what_en}"),
        )
    };
    Ok(match kind {
        K::Number => {
            let (prefix, rest) = split_prefix(raw);
            let (value, lo, hi) = number_range(rest).ok_or_else(|| bad("数値", "number"))?;
            Value::Number {
                prefix,
                lo,
                hi,
                value,
            }
        }
        K::Date => {
            let (prefix, rest) = split_prefix(raw);
            let range = parse_range(rest).ok_or_else(|| bad("日付", "date"))?;
            Value::Date { prefix, range }
        }
        K::String => Value::String(unescape(raw)),
        K::Uri => Value::Uri(unescape(raw)),
        K::Token => {
            if *modifier == Modifier::Text {
                return Ok(Value::String(unescape(raw)));
            }
            let parts = split_unescaped_keep_empty(raw, '|');
            if *modifier == Modifier::OfType {
                if parts.len() != 3 {
                    return Err(bad(
                        "識別子型（system|code|value）",
                        "of-type value (system|code|value)",
                    ));
                }
                return Ok(Value::OfType {
                    system: parts[0].clone(),
                    code: parts[1].clone(),
                    value: parts[2].clone(),
                });
            }
            match parts.len() {
                1 => Value::Token {
                    system: None,
                    code: Some(parts[0].clone()),
                },
                2 => Value::Token {
                    system: Some(parts[0].clone()),
                    code: if parts[1].is_empty() {
                        None
                    } else {
                        Some(parts[1].clone())
                    },
                },
                _ => return Err(bad("トークン（system|code）", "token (system|code)")),
            }
        }
        K::Reference => {
            if *modifier == Modifier::Identifier {
                let parts = split_unescaped_keep_empty(raw, '|');
                return Ok(match parts.len() {
                    1 => Value::Token {
                        system: None,
                        code: Some(parts[0].clone()),
                    },
                    2 => Value::Token {
                        system: Some(parts[0].clone()),
                        code: Some(parts[1].clone()),
                    },
                    _ => return Err(bad("識別子", "identifier")),
                });
            }
            let v = unescape(raw);
            if v.contains("://") || v.starts_with("urn:") {
                // absolute: maybe http://base/Type/id; the REST layer strips its own base.
                return Ok(Value::Url(v));
            }
            let segs: Vec<&str> = v.split('/').collect();
            match segs.as_slice() {
                [id] => {
                    let ty = match modifier {
                        Modifier::Type(t) => Some(t.clone()),
                        _ if targets.len() == 1 => Some(targets[0].clone()),
                        _ => None,
                    };
                    check_id(name, id)?;
                    Value::Reference {
                        ty,
                        id: id.to_string(),
                    }
                }
                [t, id] | [t, id, "_history", _] => {
                    check_id(name, id)?;
                    Value::Reference {
                        ty: Some(t.to_string()),
                        id: id.to_string(),
                    }
                }
                _ => return Err(bad("参照", "reference")),
            }
        }
        K::Quantity => {
            let parts = split_unescaped_keep_empty(raw, '|');
            let (prefix, num) = split_prefix(&parts[0]);
            let (value, lo, hi) = number_range(num).ok_or_else(|| bad("数量", "quantity"))?;
            let (system, code) = match parts.len() {
                1 => (None, None),
                3 => (
                    Some(parts[1].clone()).filter(|s| !s.is_empty()),
                    Some(parts[2].clone()).filter(|s| !s.is_empty()),
                ),
                _ => {
                    return Err(bad(
                        "数量（number|system|code）",
                        "quantity (number|system|code)",
                    ))
                }
            };
            Value::Quantity {
                prefix,
                lo,
                hi,
                value,
                system,
                code,
            }
        }
        K::Composite => {
            let parts = split_unescaped(raw, '$');
            if parts.len() != components.len() || parts.is_empty() {
                return Err(bad("複合値（a$b）", "composite value (a$b)"));
            }
            let mut vals = vec![];
            for (p, (_, k)) in parts.iter().zip(components) {
                vals.push(parse_value(name, *k, &Modifier::None, p, &[], &[])?);
            }
            Value::Composite(vals)
        }
        K::Special => return Err(unknown(name, "")),
    })
}

fn check_id(name: &str, id: &str) -> Result<(), QueryError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(err(
            name,
            format!("'{id}' は正しいリソースIDではありません"),
            format!("'{id}' is not a valid resource id"),
        ));
    }
    Ok(())
}

fn split_unescaped_keep_empty(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_precision() {
        assert_eq!(number_range("100"), Some((100.0, 99.5, 100.5)));
        let (_, lo, hi) = number_range("1.50").unwrap();
        assert!((lo - 1.495).abs() < 1e-12 && (hi - 1.505).abs() < 1e-12);
        let (v, lo, hi) = number_range("1e2").unwrap();
        assert_eq!(v, 100.0);
        assert!((lo - 50.0).abs() < 1e-9 && (hi - 150.0).abs() < 1e-9);
        assert!(number_range("abc").is_none());
        assert!(number_range("inf").is_none());
        assert!(number_range("").is_none());
    }

    #[test]
    fn escapes() {
        assert_eq!(split_unescaped(r"a\,b,c", ','), vec![r"a\,b", "c"]);
        assert_eq!(unescape(r"a\,b"), "a,b");
        assert_eq!(split_unescaped_keep_empty(r"|code", '|'), vec!["", "code"]);
        assert_eq!(
            split_unescaped_keep_empty(r"sys\|x|code", '|'),
            vec!["sys|x", "code"]
        );
    }
}
