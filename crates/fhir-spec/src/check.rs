//! Structural check of FHIR JSON against the base R4 definitions
//! (issue 2 item 4: every write is checked). See [`Model::check_structure`].

use crate::model::{ElementDef, Model, Node, Prim, Severity, Slot, SlotKind, NO_NODE};
use crate::primitive as p;
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// One problem found in a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    /// FHIR issue-type code: "structure", "required", "value", "invalid", "not-supported", "too-costly".
    pub code: &'static str,
    /// FHIRPath location, e.g. `"Patient.name[0].given[1]"`, "Observation.value.ofType(Quantity)".
    pub expression: String,
    pub message_ja: String,
    pub message_en: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} [{}] {}: {}",
            self.severity.as_str(),
            self.code,
            self.expression,
            self.message_en
        )
    }
}

/// Deeper nesting than this is refused instead of recursing further.
const MAX_DEPTH: usize = 256;
/// Values quoted in messages are cut to this many characters.
const QUOTE_MAX: usize = 80;
/// At most this many issues are reported (then one "too-costly" issue), so garbage input
/// cannot make the answer explode.
pub const MAX_ISSUES: usize = 1000;

#[derive(Clone, Copy)]
enum Seg<'a> {
    Root(&'a str),
    Key(&'a str),
    Choice(&'a str, &'a str),
    Index(usize),
}

/// A location, rendered only when an issue is reported.
#[derive(Clone, Copy)]
struct Loc<'a> {
    parent: Option<&'a Loc<'a>>,
    seg: Seg<'a>,
}

impl<'a> Loc<'a> {
    fn child(&'a self, seg: Seg<'a>) -> Loc<'a> {
        Loc {
            parent: Some(self),
            seg,
        }
    }

    fn render(&self) -> String {
        let mut segs = Vec::new();
        let mut cur = Some(self);
        while let Some(l) = cur {
            segs.push(l.seg);
            cur = l.parent;
        }
        let mut s = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Seg::Root(r) => s.push_str(r),
                Seg::Key(k) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(k);
                }
                Seg::Choice(name, ty) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    let _ = write!(s, "{name}.ofType({ty})");
                }
                Seg::Index(i) => {
                    let _ = write!(s, "[{i}]");
                }
            }
        }
        s
    }
}

fn quote(s: &str) -> String {
    if s.chars().count() <= QUOTE_MAX {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(QUOTE_MAX).collect();
        t.push('…');
        t
    }
}

fn json_kind_en(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn json_kind_ja(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "真偽値",
        Value::Number(_) => "数値",
        Value::String(_) => "文字列",
        Value::Array(_) => "配列",
        Value::Object(_) => "オブジェクト",
    }
}

struct Checker<'m> {
    model: &'m Model,
    out: Vec<Issue>,
    /// Set once MAX_ISSUES were reported: the rest of the input is not checked.
    full: bool,
}

impl<'m> Checker<'m> {
    fn new(model: &'m Model) -> Self {
        Checker {
            model,
            out: Vec::new(),
            full: false,
        }
    }

    fn push(&mut self, code: &'static str, loc: &Loc<'_>, ja: String, en: String) {
        if self.full {
            return;
        }
        if self.out.len() >= MAX_ISSUES {
            self.full = true;
            self.out.push(Issue {
                severity: Severity::Error,
                code: "too-costly",
                expression: loc.render(),
                message_ja: format!("問題が多すぎるため、{MAX_ISSUES} 件で検査を打ち切りました"),
                message_en: format!("Too many issues: checking stopped after {MAX_ISSUES}"),
            });
            return;
        }
        self.out.push(Issue {
            severity: Severity::Error,
            code,
            expression: loc.render(),
            message_ja: ja,
            message_en: en,
        });
    }

    fn node(&self, id: u32) -> &'m Node {
        &self.model.core.nodes[id as usize]
    }

    /// A resource at `loc` (None for the top level).
    fn resource(&mut self, v: &Value, loc: Option<&Loc<'_>>, depth: usize) {
        let top = Loc {
            parent: None,
            seg: Seg::Root("Resource"),
        };
        let at = loc.unwrap_or(&top);
        let Value::Object(obj) = v else {
            self.push(
                "structure",
                at,
                format!(
                    "リソースはJSONオブジェクトでなければなりません（{}が指定されています）",
                    json_kind_ja(v)
                ),
                format!(
                    "A resource must be a JSON object, found {}",
                    json_kind_en(v)
                ),
            );
            return;
        };
        let rt = match obj.get("resourceType") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                let l = at.child(Seg::Key("resourceType"));
                self.push(
                    "structure",
                    &l,
                    format!(
                        "resourceType は文字列でなければなりません（{}が指定されています）",
                        json_kind_ja(other)
                    ),
                    format!(
                        "resourceType must be a string, found {}",
                        json_kind_en(other)
                    ),
                );
                return;
            }
            None => {
                self.push(
                    "required",
                    at,
                    "resourceType がありません".to_string(),
                    "Missing resourceType".to_string(),
                );
                return;
            }
        };
        if !self.model.is_resource_type(rt) {
            let l = at.child(Seg::Key("resourceType"));
            self.push(
                "not-supported",
                &l,
                format!("'{}' はFHIR R4の具象リソース型ではありません", quote(rt)),
                format!("'{}' is not a concrete FHIR R4 resource type", quote(rt)),
            );
            return;
        }
        let Some(&node) = self.model.core.node_index.get(rt) else {
            return;
        };
        match loc {
            Some(l) => self.object(obj, node, l, true, depth),
            None => {
                let root = Loc {
                    parent: None,
                    seg: Seg::Root(rt),
                };
                self.object(obj, node, &root, true, depth)
            }
        }
    }

    fn object(
        &mut self,
        obj: &Map<String, Value>,
        node_id: u32,
        loc: &Loc<'_>,
        is_resource: bool,
        depth: usize,
    ) {
        if depth > MAX_DEPTH {
            self.push(
                "too-costly",
                loc,
                "入れ子が深すぎます".to_string(),
                "Nesting is too deep".to_string(),
            );
            return;
        }
        if obj.is_empty() {
            self.push(
                "structure",
                loc,
                "空のオブジェクトは許されません".to_string(),
                "Empty objects are not allowed".to_string(),
            );
            return;
        }
        let node = self.node(node_id);
        // (ordinal, key) of the choice variants seen, to catch two value[x].
        let mut seen_choice: Vec<(u32, &str)> = Vec::new();
        for (key, val) in obj {
            if self.full {
                return;
            }
            if is_resource && key == "resourceType" {
                continue;
            }
            let (name, underscore) = match key.strip_prefix('_') {
                Some(k) => (k, true),
                None => (key.as_str(), false),
            };
            let Some(slot) = node.children.get(name) else {
                let l = loc.child(Seg::Key(key));
                let (ja, en) = self.unknown_message(node, key);
                self.push("structure", &l, ja, en);
                continue;
            };
            let el = self.model.element(slot.ty, slot.el);
            if el.max == Some(0) {
                let l = loc.child(Seg::Key(key));
                self.push(
                    "structure",
                    &l,
                    format!("要素 '{key}' はここでは使えません（最大 0 個）"),
                    format!("Element '{key}' is not allowed here (max 0)"),
                );
                continue;
            }
            let type_code = el
                .types
                .get(slot.type_idx as usize)
                .map(|t| t.code.as_str())
                .unwrap_or("");
            if el.is_choice {
                if let Some(&(_, other)) = seen_choice
                    .iter()
                    .find(|(o, k)| *o == slot.ordinal && *k != name)
                {
                    let l = loc.child(Seg::Key(&el.name));
                    self.push(
                        "structure",
                        &l,
                        format!(
                            "{}[x] には値を1つしか指定できません（'{}' と '{}'）",
                            el.name, other, name
                        ),
                        format!(
                            "Only one value is allowed for {}[x] (found '{}' and '{}')",
                            el.name, other, name
                        ),
                    );
                    continue;
                }
                seen_choice.push((slot.ordinal, name));
            }
            let seg = if el.is_choice {
                Seg::Choice(&el.name, type_code)
            } else {
                Seg::Key(name)
            };
            let l = loc.child(seg);
            if underscore {
                if let SlotKind::Primitive(_) = slot.kind {
                    self.primitive_extension(val, slot, el, &l, obj.get(name), depth);
                } else {
                    let l = loc.child(Seg::Key(key));
                    self.push(
                        "structure",
                        &l,
                        format!("'{key}' は使えません: '_' で始まる要素はプリミティブ型の要素にのみ使えます"),
                        format!("'{key}' is not allowed: '_' elements are only for primitive elements"),
                    );
                }
            } else {
                self.value(val, slot, el, type_code, &l, obj, name, depth);
            }
        }
        for (ordinal, keys) in &node.required {
            if !keys.iter().any(|k| obj.contains_key(&**k)) {
                let (t, e) = node.ordered[*ordinal as usize];
                let el = self.model.element(t, e);
                let l = loc.child(Seg::Key(&el.name));
                let shown = if el.is_choice {
                    format!("{}[x]", el.name)
                } else {
                    el.name.clone()
                };
                self.push(
                    "required",
                    &l,
                    format!("必須要素 '{shown}' がありません（最小 {} 個）", el.min),
                    format!("Missing required element '{shown}' (min {})", el.min),
                );
            }
        }
    }

    fn unknown_message(&self, node: &Node, key: &str) -> (String, String) {
        // A choice element with a type suffix that is not allowed?
        for &(t, e) in &node.ordered {
            let el = self.model.element(t, e);
            if el.is_choice {
                let rest = key.trim_start_matches('_');
                if let Some(suffix) = rest.strip_prefix(el.name.as_str()) {
                    if suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                        let allowed: Vec<&str> = el.types.iter().map(|t| t.code.as_str()).collect();
                        return (
                            format!(
                                "'{}' は不明な要素です: {}[x] に型 '{}' は使えません（使える型: {}）",
                                quote(key),
                                el.name,
                                quote(suffix),
                                allowed.join(", ")
                            ),
                            format!(
                                "Unknown element '{}': type '{}' is not allowed for {}[x] (allowed: {})",
                                quote(key),
                                quote(suffix),
                                el.name,
                                allowed.join(", ")
                            ),
                        );
                    }
                }
            }
        }
        (
            format!(
                "'{}' は {} の要素として定義されていません",
                quote(key),
                node.name
            ),
            format!("Unknown element '{}' in {}", quote(key), node.name),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn value(
        &mut self,
        val: &Value,
        slot: &Slot,
        el: &ElementDef,
        type_code: &str,
        loc: &Loc<'_>,
        siblings: &Map<String, Value>,
        name: &str,
        depth: usize,
    ) {
        if el.is_array {
            let Value::Array(items) = val else {
                self.push(
                    "structure",
                    loc,
                    format!(
                        "要素 '{}' はJSON配列でなければなりません（{}が指定されています）",
                        el.name,
                        json_kind_ja(val)
                    ),
                    format!(
                        "Element '{}' must be a JSON array, found {}",
                        el.name,
                        json_kind_en(val)
                    ),
                );
                return;
            };
            if items.is_empty() {
                self.empty_array(loc);
                return;
            }
            if let Some(max) = el.max {
                if items.len() > max as usize {
                    self.push(
                        "structure",
                        loc,
                        format!(
                            "要素 '{}' は最大 {} 個までです（{} 個あります）",
                            el.name,
                            max,
                            items.len()
                        ),
                        format!(
                            "Element '{}' allows at most {} items, found {}",
                            el.name,
                            max,
                            items.len()
                        ),
                    );
                }
            }
            for (i, item) in items.iter().enumerate() {
                if self.full {
                    return;
                }
                let l = loc.child(Seg::Index(i));
                if item.is_null() {
                    let has_ext = matches!(slot.kind, SlotKind::Primitive(_))
                        && siblings
                            .get(&format!("_{name}"))
                            .and_then(|x| x.get(i))
                            .is_some_and(|x| !x.is_null());
                    if !has_ext {
                        self.null_error(&l);
                    }
                    continue;
                }
                self.single(item, slot, type_code, &l, depth);
            }
        } else {
            if let Value::Array(_) = val {
                self.push(
                    "structure",
                    loc,
                    format!("要素 '{}' は繰り返せないため、配列にはできません", el.name),
                    format!(
                        "Element '{}' does not repeat and must not be an array",
                        el.name
                    ),
                );
                return;
            }
            if val.is_null() {
                self.null_error(loc);
                return;
            }
            self.single(val, slot, type_code, loc, depth);
        }
    }

    fn empty_array(&mut self, loc: &Loc<'_>) {
        self.push(
            "structure",
            loc,
            "空の配列は許されません（値がなければ要素ごと省略してください）".to_string(),
            "Empty arrays are not allowed (omit the element instead)".to_string(),
        );
    }

    fn null_error(&mut self, loc: &Loc<'_>) {
        self.push(
            "structure",
            loc,
            "ここに null は使えません".to_string(),
            "null is not allowed here".to_string(),
        );
    }

    fn single(&mut self, val: &Value, slot: &Slot, type_code: &str, loc: &Loc<'_>, depth: usize) {
        match slot.kind {
            SlotKind::Primitive(prim) => {
                let el = self.model.element(slot.ty, slot.el);
                let prim = if el.base_path == "Resource.id" { Prim::Id } else { prim };
                self.primitive(val, prim, type_code, loc);
            }
            SlotKind::Resource => self.resource(val, Some(loc), depth + 1),
            SlotKind::Complex(node) => match val {
                Value::Object(o) => self.object(o, node, loc, false, depth + 1),
                other => self.push(
                    "structure",
                    loc,
                    format!("{type_code} 型の値はJSONオブジェクトでなければなりません（{}が指定されています）", json_kind_ja(other)),
                    format!("A {type_code} value must be a JSON object, found {}", json_kind_en(other)),
                ),
            },
            SlotKind::Opaque => {
                if !val.is_object() {
                    self.push(
                        "structure",
                        loc,
                        format!("{type_code} 型の値はJSONオブジェクトでなければなりません"),
                        format!("A {type_code} value must be a JSON object"),
                    );
                }
            }
        }
    }

    fn primitive(&mut self, val: &Value, prim: Prim, type_code: &str, loc: &Loc<'_>) {
        let expected = match prim {
            Prim::Boolean | Prim::SystemBoolean => "boolean",
            Prim::Integer
            | Prim::PositiveInt
            | Prim::UnsignedInt
            | Prim::Decimal
            | Prim::SystemNumber => "number",
            _ => "string",
        };
        let ok_kind = matches!(
            (expected, val),
            ("boolean", Value::Bool(_))
                | ("number", Value::Number(_))
                | ("string", Value::String(_))
        );
        if !ok_kind {
            let expected_ja = match expected {
                "boolean" => "真偽値",
                "number" => "数値",
                _ => "文字列",
            };
            self.push(
                "structure",
                loc,
                format!(
                    "{type_code} 型の値はJSONの{expected_ja}でなければなりません（{}が指定されています）",
                    json_kind_ja(val)
                ),
                format!("A {type_code} value must be a JSON {expected}, found {}", json_kind_en(val)),
            );
            return;
        }
        match val {
            Value::Number(n) => {
                let text = n.as_str();
                let min = match prim {
                    Prim::Integer => i64::from(i32::MIN),
                    Prim::PositiveInt => 1,
                    Prim::UnsignedInt => 0,
                    _ => return,
                };
                if let Err((en, ja)) = p::check_integer(text, min) {
                    self.push(
                        "value",
                        loc,
                        format!("'{}' は {type_code} 型として不正です: {ja}", quote(text)),
                        format!("'{}' is not a valid {type_code}: {en}", quote(text)),
                    );
                }
            }
            Value::String(s) => {
                if s.is_empty() {
                    self.push(
                        "value",
                        loc,
                        "空文字列は許されません（値がなければ要素ごと省略してください）"
                            .to_string(),
                        "Empty strings are not allowed (omit the element instead)".to_string(),
                    );
                    return;
                }
                let ok = match prim {
                    Prim::String | Prim::Markdown => {
                        if s.len() > p::MAX_STRING_BYTES {
                            self.push(
                                "value",
                                loc,
                                "文字列が長すぎます（最大1MB）".to_string(),
                                "String is too long (maximum 1 MB)".to_string(),
                            );
                            return;
                        }
                        p::is_string(s)
                    }
                    Prim::Code => p::is_code(s),
                    Prim::Id => p::is_id(s),
                    Prim::Uri => p::is_uri(s),
                    Prim::Oid => p::is_oid(s),
                    Prim::Uuid => p::is_uuid(s),
                    Prim::Base64 => p::is_base64(s),
                    Prim::Date => p::is_date(s),
                    Prim::DateTime => p::is_date_time(s),
                    Prim::Instant => p::is_instant(s),
                    Prim::Time => p::is_time(s),
                    _ => true,
                };
                if !ok {
                    let shown = if prim == Prim::Id && type_code != "id" {
                        "id"
                    } else {
                        type_code
                    };
                    self.push(
                        "value",
                        loc,
                        format!("'{}' は {shown} 型として不正な値です", quote(s)),
                        format!("'{}' is not a valid {shown}", quote(s)),
                    );
                }
            }
            _ => {}
        }
    }

    /// `_name`: the id/extension part of a primitive (an object, or an array aligned with the values).
    fn primitive_extension(
        &mut self,
        val: &Value,
        slot: &Slot,
        el: &ElementDef,
        loc: &Loc<'_>,
        values: Option<&Value>,
        depth: usize,
    ) {
        let node = slot.next;
        if el.is_array {
            let Value::Array(items) = val else {
                self.push(
                    "structure",
                    loc,
                    format!("'_{}' はJSON配列でなければなりません", el.name),
                    format!("'_{}' must be a JSON array", el.name),
                );
                return;
            };
            if items.is_empty() {
                self.empty_array(loc);
                return;
            }
            if let Some(Value::Array(vs)) = values {
                if vs.len() != items.len() {
                    self.push(
                        "structure",
                        loc,
                        format!(
                            "'{}' と '_{}' の配列の長さが一致しません（{} と {}）",
                            el.name,
                            el.name,
                            vs.len(),
                            items.len()
                        ),
                        format!(
                            "The arrays '{}' and '_{}' differ in length ({} and {})",
                            el.name,
                            el.name,
                            vs.len(),
                            items.len()
                        ),
                    );
                }
            }
            for (i, item) in items.iter().enumerate() {
                if self.full {
                    return;
                }
                let l = loc.child(Seg::Index(i));
                match item {
                    Value::Null => {
                        let has_value = matches!(values, Some(Value::Array(vs)) if vs.get(i).is_some_and(|v| !v.is_null()));
                        if !has_value {
                            self.null_error(&l);
                        }
                    }
                    Value::Object(o) if node != NO_NODE => {
                        self.object(o, node, &l, false, depth + 1)
                    }
                    other => self.not_object(&l, other),
                }
            }
        } else {
            match val {
                Value::Object(o) if node != NO_NODE => self.object(o, node, loc, false, depth + 1),
                other => self.not_object(loc, other),
            }
        }
    }

    fn not_object(&mut self, loc: &Loc<'_>, v: &Value) {
        self.push(
            "structure",
            loc,
            format!("プリミティブ型の拡張部分はJSONオブジェクトでなければなりません（{}が指定されています）", json_kind_ja(v)),
            format!("The extension part of a primitive must be a JSON object, found {}", json_kind_en(v)),
        );
    }
}

impl Model {
    /// Checks `resource` against the base R4 structure: resourceType, known elements,
    /// JSON kinds and arrays, primitive formats, `_primitive` extensions, choice types,
    /// required elements, no empty values, nested resources (contained, Bundle entries,
    /// Parameters). Returns every problem found (empty = structurally valid). Never panics.
    ///
    /// Locations are FHIRPath: `Patient.name[0].given[1]`, `Observation.value.ofType(Quantity).unit`,
    /// `Bundle.entry[2].resource.birthDate`, `Patient.birthDate.extension[0].url`.
    pub fn check_structure(&self, resource: &Value) -> Vec<Issue> {
        let mut c = Checker::new(self);
        c.resource(resource, None, 0);
        c.out
    }

    /// Checks a value of type `type_name` (a datatype such as "HumanName", or a backbone path
    /// such as "Patient.contact") instead of a whole resource; `location` prefixes the paths.
    pub fn check_value(&self, type_name: &str, value: &Value, location: &str) -> Vec<Issue> {
        let mut c = Checker::new(self);
        let root = Loc {
            parent: None,
            seg: Seg::Root(location),
        };
        match (self.core.node_index.get(type_name), value) {
            (Some(&node), Value::Object(o)) => c.object(o, node, &root, false, 0),
            (Some(_), other) => c.push(
                "structure",
                &root,
                format!(
                    "JSONオブジェクトでなければなりません（{}が指定されています）",
                    json_kind_ja(other)
                ),
                format!("Must be a JSON object, found {}", json_kind_en(other)),
            ),
            (None, _) => c.push(
                "not-supported",
                &root,
                format!("'{}' は不明な型です", quote(type_name)),
                format!("Unknown type '{}'", quote(type_name)),
            ),
        }
        c.out
    }
}
