//! The tree-walking evaluator: navigation, operators, variables.

use crate::error::EvalError;
use crate::functions::Func;
use crate::model::{choice_suffix_type, derives_from, ChildType, TypeInfo};
use crate::parser::{Ast, BinOp, Lit, TypeFn, TypeSpec};
use crate::temporal::{CalUnit, PartialDateTime};
use crate::value::{
    item_compare, item_equals, item_equivalent, quantity_common, Item, Quantity, Val, NULL,
};
use crate::Context;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::Value;
use std::borrow::Cow;
use std::cmp::Ordering;

pub(crate) type Coll<'a> = Vec<Item<'a>>;
pub(crate) type R<'a> = Result<Coll<'a>, EvalError>;

/// Evaluation environment for one (sub-)expression.
pub(crate) struct Env<'e, 'a> {
    pub ctx: &'e Context<'a>,
    /// The focus (`$this` collection) against which bare names and functions apply.
    pub focus: &'e [Item<'a>],
    pub index: Option<usize>,
    pub total: Option<&'e [Item<'a>]>,
    /// `%context`: the original input.
    pub context: &'e [Item<'a>],
    /// `now()` is fixed for the whole evaluation.
    pub now: &'e std::cell::OnceCell<crate::PartialDateTime>,
}

impl<'e, 'a> Env<'e, 'a> {
    pub fn with_focus<'f>(&'f self, focus: &'f [Item<'a>], index: Option<usize>) -> Env<'f, 'a> {
        Env {
            ctx: self.ctx,
            focus,
            index,
            total: self.total,
            context: self.context,
            now: self.now,
        }
    }
    /// The evaluation's `now()` (from the context override or the clock, read once).
    pub fn now(&self) -> crate::PartialDateTime {
        *self.now.get_or_init(|| self.ctx.now_value())
    }
    pub fn model(&self) -> &'a dyn TypeInfo {
        self.ctx.model
    }
}

pub(crate) fn err<T>(ja: &str, en: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError::new(ja, en))
}

pub(crate) fn lit_item<'a>(l: &Lit) -> Item<'a> {
    match l {
        Lit::Bool(b) => Item::Boolean(*b),
        Lit::Str(s) => Item::String(s.clone()),
        Lit::Int(i) => Item::Integer(*i),
        Lit::Dec(d) => Item::Decimal(*d),
        Lit::Date(d) => Item::Date(*d),
        Lit::DateTime(d) => Item::DateTime(*d),
        Lit::Time(t) => Item::Time(*t),
        Lit::Qty(q) => Item::Quantity(q.clone()),
    }
}

/// Singleton evaluation to boolean: empty → None; one Boolean → it; one other item → true; several → error.
pub(crate) fn to_bool(c: &[Item<'_>]) -> Result<Option<bool>, EvalError> {
    match c {
        [] => Ok(None),
        [one] => Ok(Some(match one.val() {
            Some(Val::Bool(b)) => b,
            _ => true,
        })),
        _ => err(
            "真偽値が必要な所に複数の項目があります",
            "expected a single boolean but found a collection of several items",
        ),
    }
}

pub(crate) fn singleton<'c, 'a>(
    c: &'c [Item<'a>],
    what: &str,
) -> Result<Option<&'c Item<'a>>, EvalError> {
    match c {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(EvalError::new(
            format!("{what} には単一の値が必要ですが複数の項目があります"),
            format!("{what} expects a single item but found {}", c.len()),
        )),
    }
}

fn bool_coll<'a>(b: Option<bool>) -> Coll<'a> {
    match b {
        Some(b) => vec![Item::Boolean(b)],
        None => Vec::new(),
    }
}

/// Infers a FHIR type from a JSON value when the model does not know the element.
fn infer_type(v: &Value) -> &str {
    match v {
        Value::Bool(_) => "boolean",
        Value::Number(n) => {
            if n.as_str().contains(['.', 'e', 'E']) {
                "decimal"
            } else {
                "integer"
            }
        }
        Value::String(_) => "string",
        Value::Object(_) => crate::value::resource_type(v).unwrap_or("Element"),
        _ => "Element",
    }
}

/// Pushes the JSON value(s) of property `key` (with `_key` extensions) as nodes of type `ct`.
fn push_values<'a>(
    out: &mut Coll<'a>,
    val: Option<&'a Value>,
    ext: Option<&'a Value>,
    ct: Option<&ChildType>,
) {
    let mk = |v: &'a Value, e: Option<&'a Value>| -> Item<'a> {
        let (tc, mp): (Cow<'a, str>, Cow<'a, str>) = match ct {
            Some(ct) if ct.type_code != "Resource" && ct.type_code != "DomainResource" => {
                (ct.type_code.clone(), ct.model_path.clone())
            }
            _ => {
                let t = infer_type(v);
                (Cow::Borrowed(t), Cow::Borrowed(t))
            }
        };
        Item::Node {
            value: v,
            type_code: tc,
            extension: e,
            model_path: mp,
        }
    };
    match (val, ext) {
        (Some(Value::Array(vs)), e) => {
            let es = e.and_then(Value::as_array);
            for (i, v) in vs.iter().enumerate() {
                let ei = es.and_then(|a| a.get(i)).filter(|x| !x.is_null());
                if v.is_null() && ei.is_none() {
                    continue;
                }
                out.push(mk(v, ei));
            }
            // extension array longer than value array
            if let Some(es) = es {
                for e in es.iter().skip(vs.len()).filter(|x| !x.is_null()) {
                    out.push(mk(&NULL, Some(e)));
                }
            }
        }
        (Some(Value::Null), None) | (None, None) => {}
        (Some(v), e) => out.push(mk(v, e.filter(|x| x.is_object()))),
        (None, Some(Value::Array(es))) => {
            for e in es.iter().filter(|x| !x.is_null()) {
                out.push(mk(&NULL, Some(e)));
            }
        }
        (None, Some(e)) => out.push(mk(&NULL, Some(e))),
    }
}

/// Object member lookup; small objects are scanned linearly, which is faster
/// than hashing the key with the map's SipHash.
#[inline]
fn get_key<'v>(obj: &'v serde_json::Map<String, Value>, name: &str) -> Option<&'v Value> {
    if obj.len() <= 32 {
        obj.iter().find(|(k, _)| k.as_str() == name).map(|(_, v)| v)
    } else {
        obj.get(name)
    }
}

/// Whether a property value can have a `_name` sibling (absent, a primitive,
/// or an array of primitives).
fn may_have_primitive_ext(v: Option<&Value>) -> bool {
    match v {
        None => true,
        Some(Value::Object(_)) => false,
        Some(Value::Array(a)) => !a.first().is_some_and(Value::is_object),
        Some(_) => true,
    }
}

/// The `_key` sibling of a primitive property, looked up only when the value can
/// have one and the object has any `_` key at all.
fn ext_of<'v>(
    obj: &'v serde_json::Map<String, Value>,
    key: &str,
    value: Option<&Value>,
) -> Option<&'v Value> {
    if !may_have_primitive_ext(value) || !obj.keys().any(|k| k.starts_with('_')) {
        return None;
    }
    if obj.len() <= 32 {
        return obj
            .iter()
            .find(|(k, _)| k.len() == key.len() + 1 && k.starts_with('_') && &k[1..] == key)
            .map(|(_, v)| v);
    }
    let mut k = String::with_capacity(key.len() + 1);
    k.push('_');
    k.push_str(key);
    obj.get(&k)
}

/// Children of `item` named `name` (handles `_name` primitive extensions and choice types).
pub(crate) fn navigate<'a>(model: &dyn TypeInfo, item: &Item<'a>, name: &str, out: &mut Coll<'a>) {
    let Item::Node {
        value,
        model_path,
        extension,
        ..
    } = item
    else {
        return;
    };
    // A primitive's `id`/`extension` live in its `_name` sibling object.
    let obj = match (value, extension) {
        (Value::Object(o), _) => o,
        (_, Some(Value::Object(o))) => o,
        _ => return,
    };
    let val = get_key(obj, name);
    let ext = ext_of(obj, name, val);
    if val.is_some() || ext.is_some() {
        let ct = model.child(model_path, name);
        push_values(out, val, ext, ct.as_ref());
        return;
    }
    // choice element: valueQuantity, valueString, …
    let known = model.knows(model_path);
    let choice_type = |k: &str| -> Option<ChildType> {
        match model.child(model_path, k) {
            Some(ct) if ct.choice => Some(ct),
            Some(_) => None,
            None if known => None,
            None => choice_suffix_type(&k[name.len()..]).map(|t| ChildType {
                model_path: t.clone(),
                type_code: t,
                choice: true,
            }),
        }
    };
    for (k, v) in obj.iter() {
        if k.len() > name.len()
            && k.starts_with(name)
            && k.as_bytes()[name.len()].is_ascii_uppercase()
        {
            if let Some(ct) = choice_type(k) {
                let e = ext_of(obj, k, Some(v));
                push_values(out, Some(v), e, Some(&ct));
            }
        }
    }
    // primitive with only an extension, under a choice name: _valueString
    for (k, e) in obj.iter() {
        if let Some(base) = k.strip_prefix('_') {
            if base.len() > name.len()
                && base.starts_with(name)
                && base.as_bytes()[name.len()].is_ascii_uppercase()
                && !obj.contains_key(base)
            {
                if let Some(ct) = choice_type(base) {
                    push_values(out, None, Some(e), Some(&ct));
                }
            }
        }
    }
}

/// All children of a node (for `children()`/`descendants()`).
pub(crate) fn all_children<'a>(model: &dyn TypeInfo, item: &Item<'a>, out: &mut Coll<'a>) {
    let Item::Node {
        value: Value::Object(obj),
        model_path,
        ..
    } = item
    else {
        return;
    };
    for (k, v) in obj.iter() {
        if k == "resourceType" {
            continue;
        }
        if let Some(base) = k.strip_prefix('_') {
            if !obj.contains_key(base) {
                let ct = model.child(model_path, base);
                push_values(out, None, Some(v), ct.as_ref());
            }
            continue;
        }
        let e = ext_of(obj, k, Some(v));
        let ct = model.child(model_path, k);
        push_values(out, Some(v), e, ct.as_ref());
    }
}

/// Does the item's type match the type specifier?
pub(crate) fn is_type(model: &dyn TypeInfo, item: &Item<'_>, spec: &TypeSpec) -> bool {
    let ns = spec.namespace.as_deref();
    let name = spec.name.as_str();
    match item {
        Item::Node { type_code, .. } => {
            if ns == Some("System") {
                return false;
            }
            derives_from(model, type_code, name)
        }
        _ => {
            if ns == Some("FHIR") {
                return false;
            }
            item.type_name() == name
        }
    }
}

/// `as`/`ofType` matching: FHIR primitive types must match exactly (a `code` is
/// not returned by `as(string)`), other types match by inheritance.
pub(crate) fn is_type_exact(model: &dyn TypeInfo, item: &Item<'_>, spec: &TypeSpec) -> bool {
    match item {
        Item::Node { type_code, .. } if crate::model::PRIMITIVES.contains(&&**type_code) => {
            spec.namespace.as_deref() != Some("System") && **type_code == spec.name
        }
        _ => is_type(model, item, spec),
    }
}

pub(crate) fn type_exists(model: &dyn TypeInfo, spec: &TypeSpec) -> bool {
    let sys = matches!(
        spec.name.as_str(),
        "Boolean" | "String" | "Integer" | "Decimal" | "Date" | "DateTime" | "Time" | "Quantity"
    );
    match spec.namespace.as_deref() {
        // Unknown System types simply never match.
        Some("System") => true,
        Some("FHIR") => model.is_type(&spec.name),
        None => sys || model.is_type(&spec.name),
        Some(_) => false,
    }
}

pub(crate) fn eval<'a>(ast: &Ast, env: &Env<'_, 'a>) -> R<'a> {
    match ast {
        Ast::Empty => Ok(Vec::new()),
        Ast::Lit(l) => Ok(vec![lit_item(l)]),
        Ast::This => Ok(env.focus.to_vec()),
        Ast::Index => Ok(env
            .index
            .map(|i| vec![Item::Integer(i as i64)])
            .unwrap_or_default()),
        Ast::Total => Ok(env.total.map(|t| t.to_vec()).unwrap_or_default()),
        Ast::Env(name) => env_var(name, env),
        Ast::Member(None, name) => {
            let mut out = Vec::with_capacity(env.focus.len());
            let model = env.model();
            for it in env.focus {
                // A type name as the first step selects the focus if it is of that type.
                if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                    if let Item::Node { type_code, .. } = it {
                        if derives_from(model, type_code, name) {
                            out.push(it.clone());
                            continue;
                        }
                    }
                }
                navigate(model, it, name, &mut out);
            }
            if env.ctx.strict && !env.focus.is_empty() {
                if !name.starts_with(|c: char| c.is_ascii_uppercase()) {
                    strict_check(model, env.focus, name)?;
                } else if out.is_empty() {
                    return err(
                        "コンテキストの型と一致しない型名です",
                        format!("type name '{name}' does not match the context type"),
                    );
                }
            }
            Ok(out)
        }
        Ast::Member(Some(t), name) => {
            if let Ast::Call(tt, f, a) = &**t {
                if *f == Func::Type && a.is_empty() {
                    let input = match tt {
                        Some(x) => eval(x, env)?,
                        None => env.focus.to_vec(),
                    };
                    return Ok(crate::functions::type_member(&input, name));
                }
            }
            let base = eval(t, env)?;
            let mut out = Vec::with_capacity(base.len());
            let model = env.model();
            for it in &base {
                navigate(model, it, name, &mut out);
            }
            if env.ctx.strict {
                strict_check(model, &base, name)?;
                // Static check: `(x as T).name` needs `name` to be an element of T,
                // even when the cast yields nothing at run time.
                if let Ast::TypeOp(_, TypeFn::As | TypeFn::OfType, spec) = &**t {
                    let tn = spec.name.as_str();
                    if spec.namespace.as_deref() != Some("System")
                        && model.knows(tn)
                        && model.child(tn, name).is_none()
                        && !model.has_element(tn, name)
                    {
                        return err(
                            "型に存在しない要素です",
                            format!("'{name}' is not an element of {tn}"),
                        );
                    }
                }
            }
            Ok(out)
        }
        Ast::Call(target, f, args) => {
            if env.ctx.strict
                && matches!(
                    f,
                    Func::Skip | Func::Take | Func::First | Func::Last | Func::Tail | Func::Single
                )
            {
                if let Some(t) = target {
                    if matches!(&**t, Ast::Call(_, g, _) if *g == Func::Children || *g == Func::Descendants)
                    {
                        return err(
                            "順序のない集合に順序依存の関数は使えません",
                            format!("{}() applied to an unordered collection", f.name()),
                        );
                    }
                }
            }
            let input = match target {
                Some(t) => eval(t, env)?,
                None => env.focus.to_vec(),
            };
            let out = crate::functions::call(*f, input, args, env)?;
            check_size(&out)?;
            Ok(out)
        }
        Ast::TypeOp(target, f, spec) => {
            let input = match target {
                Some(t) => eval(t, env)?,
                None => env.focus.to_vec(),
            };
            let model = env.model();
            if !type_exists(model, spec) {
                return err("不明な型です", format!("unknown type '{}'", spec.name));
            }
            match f {
                TypeFn::OfType => Ok(input
                    .into_iter()
                    .filter(|i| is_type_exact(model, i, spec))
                    .collect()),
                TypeFn::Is => match singleton(&input, "is")? {
                    None => Ok(Vec::new()),
                    Some(i) => Ok(vec![Item::Boolean(is_type(model, i, spec))]),
                },
                // `as` on several items filters like `ofType` (R4 dom-3 and many
                // R4 search parameters rely on it); strict mode requires a singleton.
                TypeFn::As => {
                    if env.ctx.strict {
                        singleton(&input, "as")?;
                    }
                    Ok(input
                        .into_iter()
                        .filter(|i| is_type_exact(model, i, spec))
                        .collect())
                }
            }
        }
        Ast::Indexer(t, idx) => {
            let base = eval(t, env)?;
            let i = eval(idx, env)?;
            match singleton(&i, "[]")?.and_then(|x| x.val()) {
                Some(Val::Int(n)) if n >= 0 => {
                    Ok(base.into_iter().nth(n as usize).into_iter().collect())
                }
                Some(Val::Int(_)) | None => Ok(Vec::new()),
                _ => err("添字は整数でなければなりません", "index must be an integer"),
            }
        }
        Ast::Neg(inner) => {
            let v = eval(inner, env)?;
            match singleton(&v, "-")? {
                None => Ok(Vec::new()),
                Some(i) => match i.val() {
                    Some(Val::Int(n)) => {
                        Ok(vec![Item::Integer(n.checked_neg().ok_or_else(|| {
                            EvalError::new("整数のオーバーフロー", "integer overflow")
                        })?)])
                    }
                    Some(Val::Dec(d)) => Ok(vec![Item::Decimal(-d)]),
                    Some(Val::Qty(q)) => Ok(vec![Item::Quantity(Quantity {
                        value: -q.value,
                        unit: q.unit.clone(),
                    })]),
                    _ => err(
                        "数値以外に単項マイナスは使えません",
                        "unary minus applied to a non-numeric value",
                    ),
                },
            }
        }
        Ast::Bin(op, l, r) => {
            let out = binary(*op, l, r, env)?;
            check_size(&out)?;
            Ok(out)
        }
    }
}

/// Largest collection and string an evaluation may build (protects against
/// expressions that grow results exponentially).
pub(crate) const MAX_ITEMS: usize = 100_000;
pub(crate) const MAX_STRING: usize = 1 << 20;

fn check_size(c: &[Item<'_>]) -> Result<(), EvalError> {
    if c.len() > MAX_ITEMS {
        return err(
            "結果の集合が大きすぎます",
            format!("result collection exceeds {MAX_ITEMS} items"),
        );
    }
    if c.iter()
        .any(|i| matches!(i, Item::String(s) if s.len() > MAX_STRING))
    {
        return err(
            "結果の文字列が長すぎます",
            format!("result string exceeds {MAX_STRING} bytes"),
        );
    }
    Ok(())
}

/// Strict mode: the name must be an element of the (known) type, and must not be a
/// type-suffixed choice key such as `valueQuantity`.
fn strict_check(model: &dyn TypeInfo, base: &[Item<'_>], name: &str) -> Result<(), EvalError> {
    for it in base {
        if let Item::Node {
            model_path,
            value: Value::Object(_),
            ..
        } = it
        {
            if model.child(model_path, name).is_some_and(|c| c.choice) {
                return err(
                    "選択型の要素は型名の接尾辞なしで参照してください",
                    format!("'{name}' is a choice-type key; use the element name with ofType()"),
                );
            }
            if model.knows(model_path)
                && model.child(model_path, name).is_none()
                && !model.has_element(model_path, name)
            {
                return err(
                    "型に存在しない要素です",
                    format!("'{name}' is not an element of {model_path}"),
                );
            }
        }
    }
    Ok(())
}

fn env_var<'a>(name: &str, env: &Env<'_, 'a>) -> R<'a> {
    let ctx = env.ctx;
    if let Some(v) = ctx.vars.get(name) {
        return Ok(v.clone());
    }
    Ok(match name {
        "context" => env.context.to_vec(),
        "resource" => ctx
            .resource
            .map(|r| vec![Item::resource(r)])
            .unwrap_or_default(),
        "rootResource" => ctx
            .root_resource
            .or(ctx.resource)
            .map(|r| vec![Item::resource(r)])
            .unwrap_or_default(),
        "ucum" => vec![Item::String("http://unitsofmeasure.org".into())],
        "sct" => vec![Item::String("http://snomed.info/sct".into())],
        "loinc" => vec![Item::String("http://loinc.org".into())],
        _ => {
            if let Some(vs) = name.strip_prefix("vs-") {
                vec![Item::String(format!("http://hl7.org/fhir/ValueSet/{vs}"))]
            } else if let Some(ext) = name.strip_prefix("ext-") {
                vec![Item::String(format!(
                    "http://hl7.org/fhir/StructureDefinition/{ext}"
                ))]
            } else if let Some(cs) = name.strip_prefix("cs-") {
                vec![Item::String(format!("http://hl7.org/fhir/{cs}"))]
            } else {
                return err(
                    "未定義の環境変数です",
                    format!("undefined environment variable %{name}"),
                );
            }
        }
    })
}

/// `to_bool(&eval(ast, env)?)`, without building the intermediate collections for the
/// common boolean shapes (`and`/`or`/`implies`/`xor`, `=`, `!=`, `exists()`, `empty()`,
/// `not()`): same results, same errors, same evaluation order.
pub(crate) fn eval_bool(ast: &Ast, env: &Env<'_, '_>) -> Result<Option<bool>, EvalError> {
    match ast {
        Ast::Bin(op @ (BinOp::And | BinOp::Or | BinOp::Implies | BinOp::Xor), l, r) => {
            bool_op(*op, l, r, env)
        }
        Ast::Bin(op @ (BinOp::Eq | BinOp::NotEq), l, r) => {
            let eq = match &**r {
                // `path = 'literal'`: compared without building the literal's collection.
                Ast::Lit(Lit::Str(s)) => match eval(l, env)?.as_slice() {
                    [] => None,
                    [x] => crate::value::item_equals_str(x, s),
                    _ => Some(false),
                },
                _ => {
                    let a = eval(l, env)?;
                    let b = eval(r, env)?;
                    coll_equals(&a, &b)
                }
            };
            Ok(if *op == BinOp::Eq { eq } else { eq.map(|x| !x) })
        }
        Ast::Call(Some(t), f @ (Func::Exists | Func::Empty | Func::Not), args)
            if args.is_empty() =>
        {
            let input = eval(t, env)?;
            match f {
                Func::Exists => Ok(Some(!input.is_empty())),
                Func::Empty => Ok(Some(input.is_empty())),
                _ => Ok(to_bool(&input)?.map(|b| !b)),
            }
        }
        _ => to_bool(&eval(ast, env)?),
    }
}

/// The boolean operators with FHIRPath's three-valued logic (short-circuit where allowed).
fn bool_op(op: BinOp, l: &Ast, r: &Ast, env: &Env<'_, '_>) -> Result<Option<bool>, EvalError> {
    Ok(match op {
        BinOp::And => {
            let a = eval_bool(l, env)?;
            if a == Some(false) {
                return Ok(Some(false));
            }
            let b = eval_bool(r, env)?;
            match (a, b) {
                (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            }
        }
        BinOp::Or => {
            let a = eval_bool(l, env)?;
            if a == Some(true) {
                return Ok(Some(true));
            }
            let b = eval_bool(r, env)?;
            match (a, b) {
                (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            }
        }
        BinOp::Implies => {
            let a = eval_bool(l, env)?;
            if a == Some(false) {
                return Ok(Some(true));
            }
            let b = eval_bool(r, env)?;
            match (a, b) {
                (_, Some(true)) => Some(true),
                (Some(true), Some(false)) => Some(false),
                _ => None,
            }
        }
        _ => {
            let a = eval_bool(l, env)?;
            let b = eval_bool(r, env)?;
            match (a, b) {
                (Some(x), Some(y)) => Some(x != y),
                _ => None,
            }
        }
    })
}

fn binary<'a>(op: BinOp, l: &Ast, r: &Ast, env: &Env<'_, 'a>) -> R<'a> {
    if matches!(op, BinOp::And | BinOp::Or | BinOp::Implies | BinOp::Xor) {
        return Ok(bool_coll(bool_op(op, l, r, env)?));
    }
    let a = eval(l, env)?;
    let b = eval(r, env)?;
    match op {
        BinOp::Union => Ok(union(a, b)),
        BinOp::Eq => Ok(bool_coll(coll_equals(&a, &b))),
        BinOp::NotEq => Ok(bool_coll(coll_equals(&a, &b).map(|x| !x))),
        BinOp::Equiv => Ok(bool_coll(Some(coll_equivalent(&a, &b)))),
        BinOp::NotEquiv => Ok(bool_coll(Some(!coll_equivalent(&a, &b)))),
        BinOp::In | BinOp::Contains => {
            let (item, set) = if op == BinOp::In { (&a, &b) } else { (&b, &a) };
            match singleton(item, "in")? {
                None => Ok(Vec::new()),
                Some(x) => Ok(bool_coll(Some(
                    set.iter().any(|y| item_equals(x, y) == Some(true)),
                ))),
            }
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let (Some(x), Some(y)) = (singleton(&a, "比較")?, singleton(&b, "比較")?) else {
                return Ok(Vec::new());
            };
            match item_compare(x, y) {
                Ok(None) => Ok(Vec::new()),
                Ok(Some(o)) => Ok(bool_coll(Some(match op {
                    BinOp::Lt => o == Ordering::Less,
                    BinOp::Le => o != Ordering::Greater,
                    BinOp::Gt => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                }))),
                Err(()) => {
                    if let (Some(Val::Qty(_)), Some(Val::Qty(_))) = (x.val(), y.val()) {
                        return Ok(Vec::new());
                    }
                    err(
                        "比較できない型です",
                        format!("cannot compare {} with {}", x.type_name(), y.type_name()),
                    )
                }
            }
        }
        BinOp::Concat => {
            let s = |c: &[Item<'_>]| -> Result<String, EvalError> {
                match singleton(c, "&")? {
                    None => Ok(String::new()),
                    Some(i) => match i.val() {
                        Some(Val::Str(s)) => Ok(s.to_string()),
                        Some(v) => Ok(crate::value::val_to_string(&v)),
                        None => err("文字列が必要です", "& expects strings"),
                    },
                }
            };
            Ok(vec![Item::String(s(&a)? + &s(&b)?)])
        }
        _ => {
            let (Some(x), Some(y)) = (singleton(&a, "算術演算")?, singleton(&b, "算術演算")?)
            else {
                return Ok(Vec::new());
            };
            let (Some(x), Some(y)) = (x.val(), y.val()) else {
                return err("算術演算の対象が不正です", "invalid operand for arithmetic");
            };
            arith(op, &x, &y).map(|o| o.into_iter().collect())
        }
    }
}

pub(crate) fn union<'a>(a: Coll<'a>, b: Coll<'a>) -> Coll<'a> {
    let mut out: Coll<'a> = Vec::with_capacity(a.len() + b.len());
    let mut set = crate::value::ItemSet::default();
    for it in a.into_iter().chain(b) {
        if set.insert(&out, &it, out.len()) {
            out.push(it);
        }
    }
    out
}

pub(crate) fn coll_equals(a: &[Item<'_>], b: &[Item<'_>]) -> Option<bool> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    if a.len() != b.len() {
        return Some(false);
    }
    let mut uncertain = false;
    for (x, y) in a.iter().zip(b) {
        match item_equals(x, y) {
            Some(false) => return Some(false),
            None => uncertain = true,
            Some(true) => {}
        }
    }
    if uncertain {
        None
    } else {
        Some(true)
    }
}

pub(crate) fn coll_equivalent(a: &[Item<'_>], b: &[Item<'_>]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    'outer: for x in a {
        for (j, y) in b.iter().enumerate() {
            if !used[j] && item_equivalent(x, y) {
                used[j] = true;
                continue 'outer;
            }
        }
        return false;
    }
    true
}

fn overflow() -> EvalError {
    EvalError::new("数値のオーバーフロー", "numeric overflow")
}

fn qty_unit_op(a: &Quantity, b: &Quantity, op: BinOp) -> Option<Quantity> {
    let bu = |u: &str| -> String {
        let u = crate::ucum::calendar_to_ucum(u).unwrap_or(u);
        if u.contains(['.', '/']) {
            format!("({u})")
        } else {
            u.to_string()
        }
    };
    let (va, vb) = (a.value, b.value);
    match op {
        BinOp::Mul => {
            let unit = match (a.unit.as_str(), b.unit.as_str()) {
                ("1", u) | (u, "1") => u.to_string(),
                (x, y) => format!("{}.{}", bu(x), bu(y)),
            };
            Some(Quantity {
                value: va.checked_mul(vb)?,
                unit,
            })
        }
        _ => {
            if vb.is_zero() {
                return None;
            }
            let (unit, value) = if a.unit == b.unit {
                ("1".to_string(), va.checked_div(vb)?)
            } else if let Some((ca, cb)) = quantity_common(a, b) {
                ("1".to_string(), ca.checked_div(cb)?)
            } else if b.unit == "1" {
                (a.unit.clone(), va.checked_div(vb)?)
            } else {
                (
                    format!("{}/{}", bu(&a.unit), bu(&b.unit)),
                    va.checked_div(vb)?,
                )
            };
            Some(Quantity { value, unit })
        }
    }
}

pub(crate) fn arith<'a>(
    op: BinOp,
    x: &Val<'_>,
    y: &Val<'_>,
) -> Result<Option<Item<'a>>, EvalError> {
    use Val::*;
    let bad = || {
        err(
            "この型に算術演算は使えません",
            "operator not defined for these operand types",
        )
    };
    Ok(match (x, y) {
        (Int(a), Int(b)) => match op {
            BinOp::Add => Some(Item::Integer(a.checked_add(*b).ok_or_else(overflow)?)),
            BinOp::Sub => Some(Item::Integer(a.checked_sub(*b).ok_or_else(overflow)?)),
            BinOp::Mul => Some(Item::Integer(a.checked_mul(*b).ok_or_else(overflow)?)),
            BinOp::Div => {
                if *b == 0 {
                    None
                } else {
                    Some(Item::Decimal(
                        Decimal::from(*a)
                            .checked_div(Decimal::from(*b))
                            .ok_or_else(overflow)?
                            .normalize(),
                    ))
                }
            }
            BinOp::IntDiv => (*b != 0).then(|| Item::Integer(a.wrapping_div(*b))),
            BinOp::Mod => (*b != 0).then(|| Item::Integer(a.wrapping_rem(*b))),
            _ => return bad(),
        },
        (Int(_) | Dec(_), Int(_) | Dec(_)) => {
            let (Some(a), Some(b)) = (num(x), num(y)) else {
                return bad();
            };
            match op {
                BinOp::Add => Some(Item::Decimal(a.checked_add(b).ok_or_else(overflow)?)),
                BinOp::Sub => Some(Item::Decimal(a.checked_sub(b).ok_or_else(overflow)?)),
                BinOp::Mul => Some(Item::Decimal(a.checked_mul(b).ok_or_else(overflow)?)),
                BinOp::Div => {
                    if b.is_zero() {
                        None
                    } else {
                        Some(Item::Decimal(
                            a.checked_div(b).ok_or_else(overflow)?.normalize(),
                        ))
                    }
                }
                BinOp::IntDiv => {
                    if b.is_zero() {
                        None
                    } else {
                        let q = a.checked_div(b).ok_or_else(overflow)?.trunc();
                        Some(Item::Integer(q.to_i64().ok_or_else(overflow)?))
                    }
                }
                BinOp::Mod => {
                    if b.is_zero() {
                        None
                    } else {
                        Some(Item::Decimal(a.checked_rem(b).ok_or_else(overflow)?))
                    }
                }
                _ => return bad(),
            }
        }
        (Str(a), Str(b)) if op == BinOp::Add => Some(Item::String(format!("{a}{b}"))),
        (Date(d), Qty(q)) | (DateTime(d), Qty(q)) if matches!(op, BinOp::Add | BinOp::Sub) => {
            let unit = CalUnit::from_unit(&q.unit).ok_or_else(|| {
                EvalError::new(
                    "日付に加算できない単位です",
                    format!("cannot add a quantity in '{}' to a date", q.unit),
                )
            })?;
            let is_date = matches!(x, Date(_));
            let n = q.value.trunc().to_i64().ok_or_else(overflow)?;
            let n = if op == BinOp::Sub { -n } else { n };
            let r: Option<PartialDateTime> = d.add(n, unit);
            match r {
                Some(v) => Some(if is_date {
                    Item::Date(v)
                } else {
                    Item::DateTime(v)
                }),
                None => return err("日付の範囲外です", "date/time arithmetic out of range"),
            }
        }
        (Time(t), Qty(q)) if matches!(op, BinOp::Add | BinOp::Sub) => {
            let unit = CalUnit::from_unit(&q.unit).ok_or_else(|| {
                EvalError::new(
                    "時刻に加算できない単位です",
                    "cannot add this unit to a time",
                )
            })?;
            let n = q.value.trunc().to_i64().ok_or_else(overflow)?;
            let n = if op == BinOp::Sub { -n } else { n };
            Some(Item::Time(t.add(n, unit).ok_or_else(|| {
                EvalError::new(
                    "時刻に加算できない単位です",
                    "cannot add this unit to a time",
                )
            })?))
        }
        (Qty(a), Qty(b)) => match op {
            BinOp::Add | BinOp::Sub => {
                let Some((va, vb)) = (if a.unit == b.unit {
                    Some((a.value, b.value))
                } else {
                    convert_to(b, &a.unit).map(|v| (a.value, v))
                }) else {
                    return Ok(None);
                };
                let v = if op == BinOp::Add {
                    va.checked_add(vb)
                } else {
                    va.checked_sub(vb)
                };
                Some(Item::Quantity(Quantity {
                    value: v.ok_or_else(overflow)?,
                    unit: a.unit.clone(),
                }))
            }
            BinOp::Mul | BinOp::Div => qty_unit_op(a, b, op).map(Item::Quantity),
            _ => return bad(),
        },
        (Qty(a), Int(_) | Dec(_)) | (Int(_) | Dec(_), Qty(a))
            if matches!(op, BinOp::Mul) || (op == BinOp::Div && matches!(x, Qty(_))) =>
        {
            let Some(n) = num(x).or_else(|| num(y)) else {
                return bad();
            };
            let value = if op == BinOp::Mul {
                a.value.checked_mul(n)
            } else if n.is_zero() {
                return Ok(None);
            } else {
                a.value.checked_div(n)
            };
            Some(Item::Quantity(Quantity {
                value: value.ok_or_else(overflow)?,
                unit: a.unit.clone(),
            }))
        }
        _ => return bad(),
    })
}

/// Integer or decimal as a decimal.
pub(crate) fn num(v: &Val<'_>) -> Option<Decimal> {
    match v {
        Val::Int(i) => Some(Decimal::from(*i)),
        Val::Dec(d) => Some(*d),
        _ => None,
    }
}

/// Converts quantity `q` to `unit` when the units are commensurable.
pub(crate) fn convert_to(q: &Quantity, unit: &str) -> Option<Decimal> {
    let target = Quantity {
        value: Decimal::ONE,
        unit: unit.to_string(),
    };
    let (qv, one) = quantity_common(q, &target)?;
    qv.checked_div(one)
}
