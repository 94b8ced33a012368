//! Evaluation values: [`Item`], [`Quantity`], and the equality, equivalence and
//! ordering rules of FHIRPath.

use crate::temporal::{PartialDateTime, PartialTime};
use crate::ucum;
use rust_decimal::Decimal;
use serde_json::Value;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// A FHIRPath quantity: a decimal value with a UCUM unit code, or a calendar
/// duration keyword (`year`, `month`, `week`, `day`, `hour`, `minute`, `second`, `millisecond`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantity {
    pub value: Decimal,
    pub unit: String,
}

pub(crate) fn singular_calendar(u: &str) -> &str {
    match u {
        "years" => "year",
        "months" => "month",
        "weeks" => "week",
        "days" => "day",
        "hours" => "hour",
        "minutes" => "minute",
        "seconds" => "second",
        "milliseconds" => "millisecond",
        other => other,
    }
}

pub(crate) fn is_calendar_word(u: &str) -> bool {
    matches!(
        u,
        "year" | "month" | "week" | "day" | "hour" | "minute" | "second" | "millisecond"
    )
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_calendar_word(&self.unit) {
            write!(f, "{} {}", self.value, self.unit)
        } else {
            write!(f, "{} '{}'", self.value, self.unit)
        }
    }
}

/// The `resourceType` of a JSON object (checked first as the first key, where
/// FHIR JSON puts it, before a hashed lookup).
pub(crate) fn resource_type(v: &Value) -> Option<&str> {
    let o = v.as_object()?;
    match o.iter().next() {
        Some((k, Value::String(t))) if k == "resourceType" => Some(t),
        _ => o.get("resourceType").and_then(Value::as_str),
    }
}

/// Null JSON value used for primitive elements that only carry extensions.
pub(crate) static NULL: Value = Value::Null;

/// One item of a FHIRPath collection.
///
/// `Node` is an element of the input resource (with its FHIR type); the other
/// variants are System values produced by literals, operators and functions.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    /// An element of a resource. For primitives `value` is the JSON primitive
    /// (or `null` when only `_name` extension content exists) and `extension`
    /// the matching `_name` object, if any.
    Node {
        value: &'a Value,
        /// FHIR type code: `HumanName`, `date`, `Quantity`, `Reference`, `Patient`, `BackboneElement`, …
        type_code: Cow<'a, str>,
        /// The `_name` sibling holding `id`/`extension` of a primitive.
        extension: Option<&'a Value>,
        /// Model path for child lookup (differs from `type_code` for backbone elements,
        /// e.g. `Patient.contact`).
        model_path: Cow<'a, str>,
    },
    Boolean(bool),
    String(String),
    Integer(i64),
    Decimal(Decimal),
    Date(PartialDateTime),
    DateTime(PartialDateTime),
    Time(PartialTime),
    Quantity(Quantity),
}

/// A borrowed primitive view of an item (System or FHIR primitive).
#[derive(Debug, Clone)]
pub(crate) enum Val<'x> {
    Bool(bool),
    Str(&'x str),
    Int(i64),
    Dec(Decimal),
    Date(PartialDateTime),
    DateTime(PartialDateTime),
    Time(PartialTime),
    Qty(Cow<'x, Quantity>),
}

pub(crate) fn json_decimal(n: &serde_json::Number) -> Option<Decimal> {
    let s = n.as_str();
    Decimal::from_str(s)
        .ok()
        .or_else(|| Decimal::from_scientific(s).ok())
}

pub(crate) fn is_quantity_type(t: &str) -> bool {
    matches!(
        t,
        "Quantity" | "Age" | "Duration" | "Distance" | "Count" | "SimpleQuantity" | "MoneyQuantity"
    )
}

/// Converts a FHIR Quantity JSON object to a System Quantity (UCUM code preferred).
pub(crate) fn quantity_from_json(v: &Value) -> Option<Quantity> {
    let o = v.as_object()?;
    let value = json_decimal(o.get("value")?.as_number()?)?;
    let system = o.get("system").and_then(Value::as_str);
    let code = o.get("code").and_then(Value::as_str);
    let unit = match (system, code) {
        (Some("http://unitsofmeasure.org"), Some(c)) | (None, Some(c)) => c.to_string(),
        _ => o
            .get("unit")
            .and_then(Value::as_str)
            .or(code)
            .unwrap_or("1")
            .to_string(),
    };
    Some(Quantity { value, unit })
}

impl<'a> Item<'a> {
    /// A node for a whole resource (type taken from `resourceType`).
    pub fn resource(value: &'a Value) -> Item<'a> {
        let t = resource_type(value).unwrap_or("Resource");
        Item::Node {
            value,
            type_code: Cow::Borrowed(t),
            extension: None,
            model_path: Cow::Borrowed(t),
        }
    }

    /// A node of an explicitly given FHIR type (`HumanName`, `date`, …) or model
    /// path of a backbone element (`Patient.contact`, typed `BackboneElement`).
    pub fn node(value: &'a Value, type_code: impl Into<Cow<'a, str>>) -> Item<'a> {
        let path: Cow<'a, str> = type_code.into();
        let tc = if path.contains('.') {
            Cow::Borrowed("BackboneElement")
        } else {
            path.clone()
        };
        Item::Node {
            value,
            type_code: tc,
            extension: None,
            model_path: path,
        }
    }

    /// The JSON node, for `Item::Node`.
    pub fn as_node(&self) -> Option<&'a Value> {
        match self {
            Item::Node { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The type name: the FHIR type code for nodes, the System type name
    /// (`Boolean`, `String`, `Integer`, `Decimal`, `Date`, `DateTime`, `Time`, `Quantity`) otherwise.
    pub fn type_name(&self) -> &str {
        match self {
            Item::Node { type_code, .. } => type_code,
            Item::Boolean(_) => "Boolean",
            Item::String(_) => "String",
            Item::Integer(_) => "Integer",
            Item::Decimal(_) => "Decimal",
            Item::Date(_) => "Date",
            Item::DateTime(_) => "DateTime",
            Item::Time(_) => "Time",
            Item::Quantity(_) => "Quantity",
        }
    }

    /// True for System values (not resource elements).
    pub fn is_system(&self) -> bool {
        !matches!(self, Item::Node { .. })
    }

    /// The primitive view of this item; `None` for complex nodes and empty primitives.
    pub(crate) fn val(&self) -> Option<Val<'_>> {
        Some(match self {
            Item::Boolean(b) => Val::Bool(*b),
            Item::String(s) => Val::Str(s),
            Item::Integer(i) => Val::Int(*i),
            Item::Decimal(d) => Val::Dec(*d),
            Item::Date(d) => Val::Date(*d),
            Item::DateTime(d) => Val::DateTime(*d),
            Item::Time(t) => Val::Time(*t),
            Item::Quantity(q) => Val::Qty(Cow::Borrowed(q)),
            Item::Node {
                value, type_code, ..
            } => {
                let t: &str = type_code;
                match value {
                    Value::Bool(b) => Val::Bool(*b),
                    Value::Number(n) => match t {
                        "decimal" => Val::Dec(json_decimal(n)?),
                        _ => match n.as_i64() {
                            Some(i) if !n.as_str().contains(['.', 'e', 'E']) => Val::Int(i),
                            _ => Val::Dec(json_decimal(n)?),
                        },
                    },
                    Value::String(s) => match t {
                        "date" => PartialDateTime::parse_date(s)
                            .map(Val::Date)
                            .unwrap_or(Val::Str(s)),
                        "dateTime" | "instant" => PartialDateTime::parse_datetime(s)
                            .map(Val::DateTime)
                            .unwrap_or(Val::Str(s)),
                        "time" => PartialTime::parse(s).map(Val::Time).unwrap_or(Val::Str(s)),
                        _ => Val::Str(s),
                    },
                    Value::Object(_) if is_quantity_type(t) => {
                        Val::Qty(Cow::Owned(quantity_from_json(value)?))
                    }
                    _ => return None,
                }
            }
        })
    }

    /// Converts to a System value (nodes that are primitives become System items).
    pub fn to_system(&self) -> Option<Item<'static>> {
        Some(match self.val()? {
            Val::Bool(b) => Item::Boolean(b),
            Val::Str(s) => Item::String(s.to_string()),
            Val::Int(i) => Item::Integer(i),
            Val::Dec(d) => Item::Decimal(d),
            Val::Date(d) => Item::Date(d),
            Val::DateTime(d) => Item::DateTime(d),
            Val::Time(t) => Item::Time(t),
            Val::Qty(q) => Item::Quantity(q.into_owned()),
        })
    }

    /// The text of a System String or of a string-like FHIR primitive
    /// (`string`, `code`, `uri`, `id`, …; also dates as written).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Item::String(s) => Some(s),
            Item::Node {
                value: Value::String(s),
                ..
            } => Some(s),
            _ => None,
        }
    }

    /// A boolean value (System Boolean or FHIR `boolean`).
    pub fn as_bool(&self) -> Option<bool> {
        match self.val()? {
            Val::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A numeric value as an exact decimal (Integer, Decimal, FHIR `integer`/`decimal`…).
    pub fn as_decimal(&self) -> Option<Decimal> {
        match self.val()? {
            Val::Int(i) => Some(Decimal::from(i)),
            Val::Dec(d) => Some(d),
            _ => None,
        }
    }

    /// A date or date-time value (System Date/DateTime or FHIR `date`/`dateTime`/`instant`).
    pub fn as_date_time(&self) -> Option<PartialDateTime> {
        match self.val()? {
            Val::Date(d) | Val::DateTime(d) => Some(d),
            _ => None,
        }
    }

    /// A quantity (System Quantity or a FHIR Quantity/Age/Duration/… node with a value).
    pub fn as_quantity(&self) -> Option<Quantity> {
        match self.val()? {
            Val::Qty(q) => Some(q.into_owned()),
            _ => None,
        }
    }

    /// The string form as produced by FHIRPath `toString()`; `None` for complex nodes.
    pub fn to_fhirpath_string(&self) -> Option<String> {
        self.val().map(|v| val_to_string(&v))
    }
}

pub(crate) fn val_to_string(v: &Val<'_>) -> String {
    match v {
        Val::Bool(b) => b.to_string(),
        Val::Str(s) => s.to_string(),
        Val::Int(i) => i.to_string(),
        Val::Dec(d) => d.to_string(),
        Val::Date(d) | Val::DateTime(d) => {
            let mut s = String::new();
            let _ = d.fmt_iso(&mut s);
            s
        }
        Val::Time(t) => {
            let mut s = String::new();
            let _ = t.fmt_iso(&mut s);
            s
        }
        Val::Qty(q) => q.to_string(),
    }
}

fn dec_scale_round_eq(a: Decimal, b: Decimal) -> bool {
    let s = a.scale().min(b.scale());
    a.round_dp(s) == b.round_dp(s)
}

/// Result of comparing two quantities after unit conversion.
fn quantity_cmp(a: &Quantity, b: &Quantity, equivalent: bool) -> Option<Ordering> {
    let (av, bv) = quantity_common(a, b)?;
    if equivalent {
        let s = av
            .scale()
            .min(bv.scale())
            .min(a.value.scale().max(b.value.scale()));
        return Some(av.round_dp(s).cmp(&bv.round_dp(s)));
    }
    Some(av.cmp(&bv))
}

/// Both quantity values expressed in a common unit, if they are comparable.
pub(crate) fn quantity_common(a: &Quantity, b: &Quantity) -> Option<(Decimal, Decimal)> {
    if a.unit == b.unit {
        return Some((a.value, b.value));
    }
    let au = a.unit.as_str();
    let bu = b.unit.as_str();
    // Calendar year/month are not comparable to UCUM definite durations.
    let cal_ym = |u: &str| matches!(u, "year" | "month");
    if cal_ym(au) || cal_ym(bu) {
        if cal_ym(au) && cal_ym(bu) {
            let m = |q: &Quantity| {
                if q.unit == "year" {
                    q.value * Decimal::from(12)
                } else {
                    q.value
                }
            };
            return Some((m(a), m(b)));
        }
        return None;
    }
    let au = ucum::calendar_to_ucum(au).unwrap_or(au);
    let bu = ucum::calendar_to_ucum(bu).unwrap_or(bu);
    let (av, ad) = ucum::to_canonical(a.value, au)?;
    let (bv, bd) = ucum::to_canonical(b.value, bu)?;
    if ad != bd {
        return None;
    }
    Some((av, bv))
}

pub(crate) fn quantities_comparable(a: &Quantity, b: &Quantity) -> bool {
    quantity_common(a, b).is_some()
}

/// String equivalence (`~`): whitespace runs collapsed, case ignored.
pub fn str_equiv(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    };
    norm(a) == norm(b)
}

/// FHIRPath `=` on single items: `Some(bool)`, or `None` when uncertain.
pub(crate) fn item_equals(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    match (a.val(), b.val()) {
        (None, None) => match (a, b) {
            (
                Item::Node {
                    value: va,
                    extension: ea,
                    ..
                },
                Item::Node {
                    value: vb,
                    extension: eb,
                    ..
                },
            ) => Some(va == vb && ea == eb),
            _ => Some(false),
        },
        (Some(x), Some(y)) => val_equals(&x, &y),
        _ => Some(false),
    }
}

/// `item_equals(a, &Item::String(s))` without building the string item.
pub(crate) fn item_equals_str(a: &Item<'_>, s: &str) -> Option<bool> {
    match a.val() {
        None => Some(false),
        Some(x) => val_equals(&x, &Val::Str(s)),
    }
}

pub(crate) fn val_equals(x: &Val<'_>, y: &Val<'_>) -> Option<bool> {
    use Val::*;
    Some(match (x, y) {
        (Bool(a), Bool(b)) => a == b,
        (Str(a), Str(b)) => a == b,
        (Int(a), Int(b)) => a == b,
        (Int(a), Dec(b)) | (Dec(b), Int(a)) => Decimal::from(*a) == *b,
        (Dec(a), Dec(b)) => a == b,
        (Date(a) | DateTime(a), Date(b) | DateTime(b)) => {
            return a.compare(b).map(|o| o == Ordering::Equal)
        }
        (Time(a), Time(b)) => return a.compare(b).map(|o| o == Ordering::Equal),
        (Qty(a), Qty(b)) => return quantity_cmp(a, b, false).map(|o| o == Ordering::Equal),
        (Str(s), Date(d)) | (Date(d), Str(s)) => {
            return PartialDateTime::parse_date(s)
                .and_then(|p| p.compare(d))
                .map(|o| o == Ordering::Equal)
        }
        (Str(s), DateTime(d)) | (DateTime(d), Str(s)) => {
            return PartialDateTime::parse_datetime(s)
                .and_then(|p| p.compare(d))
                .map(|o| o == Ordering::Equal)
        }
        (Str(s), Time(t)) | (Time(t), Str(s)) => {
            return PartialTime::parse(s)
                .and_then(|p| p.compare(t))
                .map(|o| o == Ordering::Equal)
        }
        _ => false,
    })
}

/// FHIRPath `~` on single items.
pub(crate) fn item_equivalent(a: &Item<'_>, b: &Item<'_>) -> bool {
    use Val::*;
    match (a.val(), b.val()) {
        (None, None) => match (a, b) {
            (Item::Node { value: va, .. }, Item::Node { value: vb, .. }) => json_equivalent(va, vb),
            _ => false,
        },
        (Some(x), Some(y)) => match (&x, &y) {
            (Str(a), Str(b)) => str_equiv(a, b),
            (Dec(a), Dec(b)) => dec_scale_round_eq(*a, *b),
            (Int(a), Dec(b)) | (Dec(b), Int(a)) => dec_scale_round_eq(Decimal::from(*a), *b),
            (Date(a) | DateTime(a), Date(b) | DateTime(b)) => a.compare(b) == Some(Ordering::Equal),
            (Time(a), Time(b)) => a.compare(b) == Some(Ordering::Equal),
            (Qty(a), Qty(b)) => quantity_cmp(a, b, true) == Some(Ordering::Equal),
            _ => val_equals(&x, &y).unwrap_or(false),
        },
        _ => false,
    }
}

fn json_equivalent(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => str_equiv(x, y),
        (Value::Number(x), Value::Number(y)) => match (json_decimal(x), json_decimal(y)) {
            (Some(p), Some(q)) => dec_scale_round_eq(p, q),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equivalent(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            let keys = |o: &serde_json::Map<String, Value>| {
                o.keys()
                    .filter(|k| *k != "id")
                    .cloned()
                    .collect::<std::collections::BTreeSet<_>>()
            };
            keys(x) == keys(y)
                && x.iter()
                    .filter(|(k, _)| *k != "id")
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equivalent(v, w)))
        }
        _ => a == b,
    }
}

/// Ordering for `<`, `>`, `<=`, `>=`: `Ok(None)` for an uncertain (empty) result, `Err` for incomparable types.
pub(crate) fn item_compare(a: &Item<'_>, b: &Item<'_>) -> Result<Option<Ordering>, ()> {
    use Val::*;
    let (x, y) = match (a.val(), b.val()) {
        (Some(x), Some(y)) => (x, y),
        _ => return Err(()),
    };
    Ok(match (&x, &y) {
        (Int(p), Int(q)) => Some(p.cmp(q)),
        (Int(p), Dec(q)) => Some(Decimal::from(*p).cmp(q)),
        (Dec(p), Int(q)) => Some(p.cmp(&Decimal::from(*q))),
        (Dec(p), Dec(q)) => Some(p.cmp(q)),
        (Str(p), Str(q)) => Some(p.cmp(q)),
        (Date(p) | DateTime(p), Date(q) | DateTime(q)) => p.compare(q),
        (Time(p), Time(q)) => p.compare(q),
        (Qty(p), Qty(q)) => quantity_cmp(p, q, false),
        (Str(s), Date(d) | DateTime(d)) => PartialDateTime::parse_datetime(s).ok_or(())?.compare(d),
        (Date(d) | DateTime(d), Str(s)) => {
            d.compare(&PartialDateTime::parse_datetime(s).ok_or(())?)
        }
        (Str(s), Time(t)) => PartialTime::parse(s).ok_or(())?.compare(t),
        (Time(t), Str(s)) => t.compare(&PartialTime::parse(s).ok_or(())?),
        _ => return Err(()),
    })
}

/// A set of items under FHIRPath equality (`=` giving true), with hashed
/// buckets so that `distinct()`, `union`, `intersect`, `exclude`, `repeat()`
/// and friends stay linear instead of quadratic on large collections.
#[derive(Default)]
pub(crate) struct ItemSet {
    buckets: std::collections::HashMap<u64, Vec<usize>>,
    items: Vec<usize>,
}

fn hash_json(v: &Value, h: &mut impl Hasher) {
    match v {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => b.hash(h),
        Value::Number(n) => match json_decimal(n) {
            Some(d) => hash_decimal(d, h),
            None => n.as_str().hash(h),
        },
        Value::String(s) => s.hash(h),
        Value::Array(a) => {
            a.len().hash(h);
            for x in a {
                hash_json(x, h);
            }
        }
        Value::Object(o) => {
            // key order does not matter for equality
            let mut acc = 0u64;
            for (k, x) in o {
                let mut kh = std::collections::hash_map::DefaultHasher::new();
                k.hash(&mut kh);
                hash_json(x, &mut kh);
                acc = acc.wrapping_add(kh.finish());
            }
            acc.hash(h);
        }
    }
}

fn hash_decimal(d: Decimal, h: &mut impl Hasher) {
    let n = d.normalize();
    n.mantissa().hash(h);
    n.scale().hash(h);
}

/// A hash that is equal for items that can be `=`-equal (coarse for dates,
/// times and quantities, whose equality involves time zones and units).
fn item_hash(it: &Item<'_>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match it.val() {
        Some(Val::Bool(b)) => (1u8, b).hash(&mut h),
        Some(Val::Str(s)) => (2u8, s).hash(&mut h),
        Some(Val::Int(i)) => {
            3u8.hash(&mut h);
            hash_decimal(Decimal::from(i), &mut h);
        }
        Some(Val::Dec(d)) => {
            3u8.hash(&mut h);
            hash_decimal(d, &mut h);
        }
        Some(Val::Date(_) | Val::DateTime(_)) => 4u8.hash(&mut h),
        Some(Val::Time(_)) => 5u8.hash(&mut h),
        Some(Val::Qty(_)) => 6u8.hash(&mut h),
        None => match it {
            Item::Node {
                value, extension, ..
            } => {
                7u8.hash(&mut h);
                hash_json(value, &mut h);
                if let Some(e) = extension {
                    hash_json(e, &mut h);
                }
            }
            _ => 8u8.hash(&mut h),
        },
    }
    h.finish()
}

impl ItemSet {
    /// Adds `it` (stored as index `idx` of the caller's collection `all`) unless an equal item is present.
    /// Returns true when it was added.
    pub(crate) fn insert(&mut self, all: &[Item<'_>], it: &Item<'_>, idx: usize) -> bool {
        let key = item_hash(it);
        let bucket = self.buckets.entry(key).or_default();
        if bucket
            .iter()
            .any(|&j| item_equals(&all[j], it) == Some(true))
        {
            return false;
        }
        bucket.push(idx);
        self.items.push(idx);
        true
    }

    /// Whether an item equal to `it` is in the set (indices refer to `all`).
    pub(crate) fn contains(&self, all: &[Item<'_>], it: &Item<'_>) -> bool {
        self.buckets
            .get(&item_hash(it))
            .is_some_and(|b| b.iter().any(|&j| item_equals(&all[j], it) == Some(true)))
    }

    /// A set over all items of `all`.
    pub(crate) fn of(all: &[Item<'_>]) -> ItemSet {
        let mut s = ItemSet::default();
        for (i, it) in all.iter().enumerate() {
            s.insert(all, it, i);
        }
        s
    }
}
