//! The FHIRPath function library (N1 + FHIR R4 additions + a few 2.x functions
//! exercised by the official suite).

use crate::error::EvalError;
use crate::eval::{
    all_children, convert_to, err, eval, navigate, singleton, to_bool, union, Coll, Env, R,
};
use crate::parser::Ast;
use crate::temporal::{PartialDateTime, PartialTime, Precision};
use crate::value::{
    is_calendar_word, item_compare, quantities_comparable, singular_calendar, val_to_string, Item,
    ItemSet, Quantity, Val,
};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, MathematicalOps, RoundingStrategy};
use serde_json::Value;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::str::FromStr;
use std::sync::LazyLock;

/// Built-in functions, resolved at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Func {
    Empty,
    Exists,
    All,
    AllTrue,
    AnyTrue,
    AllFalse,
    AnyFalse,
    SubsetOf,
    SupersetOf,
    Count,
    Distinct,
    IsDistinct,
    Where,
    Select,
    Repeat,
    Single,
    First,
    Last,
    Tail,
    Skip,
    Take,
    Intersect,
    Exclude,
    Union,
    Combine,
    Iif,
    ToBoolean,
    ConvertsToBoolean,
    ToInteger,
    ConvertsToInteger,
    ToDecimal,
    ConvertsToDecimal,
    ToString,
    ConvertsToString,
    ToDate,
    ConvertsToDate,
    ToDateTime,
    ConvertsToDateTime,
    ToTime,
    ConvertsToTime,
    ToQuantity,
    ConvertsToQuantity,
    IndexOf,
    LastIndexOf,
    Substring,
    StartsWith,
    EndsWith,
    Contains,
    Upper,
    Lower,
    Replace,
    Matches,
    MatchesFull,
    ReplaceMatches,
    Length,
    ToChars,
    Trim,
    Split,
    Join,
    Encode,
    Decode,
    Escape,
    Unescape,
    Abs,
    Ceiling,
    Exp,
    Floor,
    Ln,
    Log,
    Power,
    Round,
    Sqrt,
    Truncate,
    Children,
    Descendants,
    Trace,
    Now,
    Today,
    TimeOfDay,
    Aggregate,
    Type,
    Not,
    Extension,
    HasValue,
    GetValue,
    Resolve,
    ConformsTo,
    MemberOf,
    Subsumes,
    SubsumedBy,
    HtmlChecks,
    Htmlchecks,
    LowBoundary,
    HighBoundary,
    Precision,
    Comparable,
    Sort,
    Coalesce,
    CheckModifiers,
    Slice,
    Sum,
    Min,
    Max,
    Avg,
}

/// (name, function, min args, max args)
const FUNCTIONS: &[(&str, Func, usize, usize)] = &[
    ("empty", Func::Empty, 0, 0),
    ("exists", Func::Exists, 0, 1),
    ("all", Func::All, 1, 1),
    ("allTrue", Func::AllTrue, 0, 0),
    ("anyTrue", Func::AnyTrue, 0, 0),
    ("allFalse", Func::AllFalse, 0, 0),
    ("anyFalse", Func::AnyFalse, 0, 0),
    ("subsetOf", Func::SubsetOf, 1, 1),
    ("supersetOf", Func::SupersetOf, 1, 1),
    ("count", Func::Count, 0, 0),
    ("distinct", Func::Distinct, 0, 0),
    ("isDistinct", Func::IsDistinct, 0, 0),
    ("where", Func::Where, 1, 1),
    ("select", Func::Select, 1, 1),
    ("repeat", Func::Repeat, 1, 1),
    ("single", Func::Single, 0, 0),
    ("first", Func::First, 0, 0),
    ("last", Func::Last, 0, 0),
    ("tail", Func::Tail, 0, 0),
    ("skip", Func::Skip, 1, 1),
    ("take", Func::Take, 1, 1),
    ("intersect", Func::Intersect, 1, 1),
    ("exclude", Func::Exclude, 1, 1),
    ("union", Func::Union, 1, 1),
    ("combine", Func::Combine, 1, 1),
    ("iif", Func::Iif, 2, 3),
    ("toBoolean", Func::ToBoolean, 0, 0),
    ("convertsToBoolean", Func::ConvertsToBoolean, 0, 0),
    ("toInteger", Func::ToInteger, 0, 0),
    ("convertsToInteger", Func::ConvertsToInteger, 0, 0),
    ("toDecimal", Func::ToDecimal, 0, 0),
    ("convertsToDecimal", Func::ConvertsToDecimal, 0, 0),
    ("toString", Func::ToString, 0, 0),
    ("convertsToString", Func::ConvertsToString, 0, 0),
    ("toDate", Func::ToDate, 0, 0),
    ("convertsToDate", Func::ConvertsToDate, 0, 0),
    ("toDateTime", Func::ToDateTime, 0, 0),
    ("convertsToDateTime", Func::ConvertsToDateTime, 0, 0),
    ("toTime", Func::ToTime, 0, 0),
    ("convertsToTime", Func::ConvertsToTime, 0, 0),
    ("toQuantity", Func::ToQuantity, 0, 1),
    ("convertsToQuantity", Func::ConvertsToQuantity, 0, 1),
    ("indexOf", Func::IndexOf, 1, 1),
    ("lastIndexOf", Func::LastIndexOf, 1, 1),
    ("substring", Func::Substring, 1, 2),
    ("startsWith", Func::StartsWith, 1, 1),
    ("endsWith", Func::EndsWith, 1, 1),
    ("contains", Func::Contains, 1, 1),
    ("upper", Func::Upper, 0, 0),
    ("lower", Func::Lower, 0, 0),
    ("replace", Func::Replace, 2, 2),
    ("matches", Func::Matches, 1, 2),
    ("matchesFull", Func::MatchesFull, 1, 2),
    ("replaceMatches", Func::ReplaceMatches, 2, 3),
    ("length", Func::Length, 0, 0),
    ("toChars", Func::ToChars, 0, 0),
    ("trim", Func::Trim, 0, 0),
    ("split", Func::Split, 1, 1),
    ("join", Func::Join, 0, 1),
    ("encode", Func::Encode, 1, 1),
    ("decode", Func::Decode, 1, 1),
    ("escape", Func::Escape, 1, 1),
    ("unescape", Func::Unescape, 1, 1),
    ("abs", Func::Abs, 0, 0),
    ("ceiling", Func::Ceiling, 0, 0),
    ("exp", Func::Exp, 0, 0),
    ("floor", Func::Floor, 0, 0),
    ("ln", Func::Ln, 0, 0),
    ("log", Func::Log, 1, 1),
    ("power", Func::Power, 1, 1),
    ("round", Func::Round, 0, 1),
    ("sqrt", Func::Sqrt, 0, 0),
    ("truncate", Func::Truncate, 0, 0),
    ("children", Func::Children, 0, 0),
    ("descendants", Func::Descendants, 0, 0),
    ("trace", Func::Trace, 1, 2),
    ("now", Func::Now, 0, 0),
    ("today", Func::Today, 0, 0),
    ("timeOfDay", Func::TimeOfDay, 0, 0),
    ("aggregate", Func::Aggregate, 1, 2),
    ("type", Func::Type, 0, 0),
    ("not", Func::Not, 0, 0),
    ("extension", Func::Extension, 1, 1),
    ("hasValue", Func::HasValue, 0, 0),
    ("getValue", Func::GetValue, 0, 0),
    ("resolve", Func::Resolve, 0, 0),
    ("conformsTo", Func::ConformsTo, 1, 1),
    ("memberOf", Func::MemberOf, 1, 1),
    ("subsumes", Func::Subsumes, 1, 1),
    ("subsumedBy", Func::SubsumedBy, 1, 1),
    ("htmlChecks", Func::HtmlChecks, 0, 0),
    ("htmlchecks", Func::Htmlchecks, 0, 0),
    ("lowBoundary", Func::LowBoundary, 0, 1),
    ("highBoundary", Func::HighBoundary, 0, 1),
    ("precision", Func::Precision, 0, 0),
    ("comparable", Func::Comparable, 1, 1),
    ("sort", Func::Sort, 0, 16),
    ("coalesce", Func::Coalesce, 1, 16),
    ("checkModifiers", Func::CheckModifiers, 0, 1),
    ("slice", Func::Slice, 2, 2),
    ("sum", Func::Sum, 0, 0),
    ("min", Func::Min, 0, 0),
    ("max", Func::Max, 0, 0),
    ("avg", Func::Avg, 0, 0),
];

impl Func {
    /// The function name as written in FHIRPath.
    pub(crate) fn name(self) -> &'static str {
        // FUNCTIONS lists the variants in declaration order.
        FUNCTIONS[self as usize].0
    }
}

/// Resolves a function name and checks the number of arguments.
pub(crate) fn lookup(name: &str, n: usize) -> Result<Func, (String, String)> {
    match FUNCTIONS.iter().find(|f| f.0 == name) {
        None => Err((
            format!("不明な関数 '{name}'"),
            format!("unknown function '{name}'"),
        )),
        Some((_, _, lo, hi)) if n < *lo || n > *hi => Err((
            format!("関数 '{name}' の引数の数が不正です"),
            format!("wrong number of arguments for '{name}': {n}"),
        )),
        Some((_, f, _, _)) => Ok(*f),
    }
}

static EMPTY_OBJECT: LazyLock<Value> = LazyLock::new(|| Value::Object(serde_json::Map::new()));

fn bools<'a>(b: Option<bool>) -> R<'a> {
    Ok(b.map(|b| vec![Item::Boolean(b)]).unwrap_or_default())
}

fn one<'a>(i: Item<'a>) -> R<'a> {
    Ok(vec![i])
}

fn opt<'a>(i: Option<Item<'a>>) -> R<'a> {
    Ok(i.into_iter().collect())
}

/// Evaluates argument `i` against the environment focus.
fn arg<'a>(args: &[Ast], i: usize, env: &Env<'_, 'a>) -> R<'a> {
    match args.get(i) {
        Some(a) => eval(a, env),
        None => Ok(Vec::new()),
    }
}

fn arg_string(
    args: &[Ast],
    i: usize,
    env: &Env<'_, '_>,
    f: &str,
) -> Result<Option<String>, EvalError> {
    let v = arg(args, i, env)?;
    match singleton(&v, f)? {
        None => Ok(None),
        Some(it) => match it.val() {
            Some(Val::Str(s)) => Ok(Some(s.to_string())),
            _ => err(
                "文字列の引数が必要です",
                format!("{f}() expects a string argument"),
            ),
        },
    }
}

fn arg_int(args: &[Ast], i: usize, env: &Env<'_, '_>, f: &str) -> Result<Option<i64>, EvalError> {
    let v = arg(args, i, env)?;
    match singleton(&v, f)? {
        None => Ok(None),
        Some(it) => match it.val() {
            Some(Val::Int(n)) => Ok(Some(n)),
            _ => err(
                "整数の引数が必要です",
                format!("{f}() expects an integer argument"),
            ),
        },
    }
}

/// The input as a single string (primitives are converted); `None` when empty.
fn input_string(input: &[Item<'_>], f: &str) -> Result<Option<String>, EvalError> {
    match singleton(input, f)? {
        None => Ok(None),
        Some(it) => match it.val() {
            Some(Val::Str(s)) => Ok(Some(s.to_string())),
            Some(Val::Qty(_)) | None => {
                err("文字列が必要です", format!("{f}() expects a string input"))
            }
            Some(v) => Ok(Some(val_to_string(&v))),
        },
    }
}

fn input_val<'c>(input: &'c [Item<'_>], f: &str) -> Result<Option<Val<'c>>, EvalError> {
    Ok(singleton(input, f)?.and_then(|i| i.val()))
}

/// Runs a lambda argument once per input item with `$this`/`$index` bound.
fn each<'a, F>(input: &[Item<'a>], body: &Ast, env: &Env<'_, 'a>, mut f: F) -> Result<(), EvalError>
where
    F: FnMut(usize, &Item<'a>, Coll<'a>) -> Result<bool, EvalError>,
{
    for (i, it) in input.iter().enumerate() {
        let focus = std::slice::from_ref(it);
        let e = env.with_focus(focus, Some(i));
        let r = eval(body, &e)?;
        if !f(i, it, r)? {
            break;
        }
    }
    Ok(())
}

/// Like [`each`], with the body evaluated as a boolean ([`crate::eval::eval_bool`]).
fn each_bool<'a, F>(
    input: &[Item<'a>],
    body: &Ast,
    env: &Env<'_, 'a>,
    mut f: F,
) -> Result<(), EvalError>
where
    F: FnMut(&Item<'a>, Option<bool>) -> Result<bool, EvalError>,
{
    for (i, it) in input.iter().enumerate() {
        let focus = std::slice::from_ref(it);
        let e = env.with_focus(focus, Some(i));
        let r = crate::eval::eval_bool(body, &e)?;
        if !f(it, r)? {
            break;
        }
    }
    Ok(())
}

fn str_item<'a>(s: impl Into<String>) -> Item<'a> {
    Item::String(s.into())
}

fn approx(d: Decimal) -> Decimal {
    d.round_dp(18).normalize()
}

pub(crate) fn call<'a>(f: Func, input: Coll<'a>, args: &[Ast], env: &Env<'_, 'a>) -> R<'a> {
    let name = f.name();
    match f {
        // ---- existence
        Func::Empty => one(Item::Boolean(input.is_empty())),
        Func::Exists => {
            if let Some(c) = args.first() {
                let mut found = false;
                each_bool(&input, c, env, |_, r| {
                    if r == Some(true) {
                        found = true;
                        return Ok(false);
                    }
                    Ok(true)
                })?;
                one(Item::Boolean(found))
            } else {
                one(Item::Boolean(!input.is_empty()))
            }
        }
        Func::All => {
            let mut ok = true;
            each_bool(&input, &args[0], env, |_, r| {
                if r != Some(true) {
                    ok = false;
                    return Ok(false);
                }
                Ok(true)
            })?;
            one(Item::Boolean(ok))
        }
        Func::AllTrue | Func::AnyTrue | Func::AllFalse | Func::AnyFalse => {
            let mut vals = Vec::with_capacity(input.len());
            for it in &input {
                match it.val() {
                    Some(Val::Bool(b)) => vals.push(b),
                    _ => {
                        return err(
                            "真偽値の集合が必要です",
                            format!("{name}() expects booleans"),
                        )
                    }
                }
            }
            one(Item::Boolean(match name {
                "allTrue" => vals.iter().all(|b| *b),
                "anyTrue" => vals.iter().any(|b| *b),
                "allFalse" => vals.iter().all(|b| !*b),
                _ => vals.iter().any(|b| !*b),
            }))
        }
        Func::SubsetOf | Func::SupersetOf => {
            let other = arg(args, 0, env)?;
            let (sub, sup) = if name == "subsetOf" {
                (&input, &other)
            } else {
                (&other, &input)
            };
            let set = ItemSet::of(sup);
            one(Item::Boolean(sub.iter().all(|x| set.contains(sup, x))))
        }
        Func::Count => one(Item::Integer(input.len() as i64)),
        Func::Distinct => Ok(union(input, Vec::new())),
        Func::IsDistinct => {
            let n = input.len();
            one(Item::Boolean(union(input, Vec::new()).len() == n))
        }
        // ---- filtering and projection
        Func::Where => {
            let mut out = Vec::new();
            each_bool(&input, &args[0], env, |it, r| {
                if r == Some(true) {
                    out.push(it.clone());
                }
                Ok(true)
            })?;
            Ok(out)
        }
        Func::Select => {
            let mut out = Vec::new();
            each(&input, &args[0], env, |_, _, r| {
                out.extend(r);
                Ok(true)
            })?;
            Ok(out)
        }
        Func::Repeat => {
            let mut out: Coll<'a> = Vec::new();
            let mut seen = ItemSet::default();
            let mut frontier = input;
            let mut rounds = 0;
            while !frontier.is_empty() && rounds < 10_000 {
                rounds += 1;
                let mut next = Vec::new();
                each(&frontier, &args[0], env, |_, _, r| {
                    for x in r {
                        if out.len() >= crate::eval::MAX_ITEMS / 10 {
                            return err(
                                "repeat() の結果が大きすぎます",
                                "repeat() produced too many items",
                            );
                        }
                        if seen.insert(&out, &x, out.len()) {
                            out.push(x.clone());
                            next.push(x);
                        }
                    }
                    Ok(true)
                })?;
                frontier = next;
            }
            Ok(out)
        }
        // ---- subsetting
        Func::Single => match input.len() {
            0 | 1 => Ok(input),
            _ => err(
                "single() の入力に複数の項目があります",
                "single() called on a collection with more than one item",
            ),
        },
        Func::First => Ok(input.into_iter().take(1).collect()),
        Func::Last => Ok(input.into_iter().last().into_iter().collect()),
        Func::Tail => Ok(input.into_iter().skip(1).collect()),
        Func::Skip => {
            let n = arg_int(args, 0, env, name)?.unwrap_or(0);
            Ok(input.into_iter().skip(n.max(0) as usize).collect())
        }
        Func::Take => {
            let n = arg_int(args, 0, env, name)?.unwrap_or(0);
            Ok(input.into_iter().take(n.max(0) as usize).collect())
        }
        Func::Intersect => {
            let other = arg(args, 0, env)?;
            let set = ItemSet::of(&other);
            let keep: Coll<'a> = input
                .into_iter()
                .filter(|x| set.contains(&other, x))
                .collect();
            Ok(union(keep, Vec::new()))
        }
        Func::Exclude => {
            let other = arg(args, 0, env)?;
            let set = ItemSet::of(&other);
            Ok(input
                .into_iter()
                .filter(|x| !set.contains(&other, x))
                .collect())
        }
        // ---- combining
        Func::Union => Ok(union(input, arg(args, 0, env)?)),
        Func::Combine => {
            let mut v = input;
            v.extend(arg(args, 0, env)?);
            Ok(v)
        }
        Func::Coalesce => {
            for a in args {
                let r = eval(a, env)?;
                if !r.is_empty() {
                    return Ok(r);
                }
            }
            Ok(Vec::new())
        }
        // ---- conversion
        Func::Iif => {
            if input.len() > 1 {
                return err(
                    "iif() の入力に複数の項目があります",
                    "iif() called on a collection with more than one item",
                );
            }
            let e = env.with_focus(&input, env.index);
            let c = eval(&args[0], &e)?;
            if env.ctx.strict && c.len() == 1 && !matches!(c[0].val(), Some(Val::Bool(_))) {
                return err(
                    "iif() の条件は真偽値でなければなりません",
                    "iif() criterion must be a boolean",
                );
            }
            if to_bool(&c)? == Some(true) {
                eval(&args[1], &e)
            } else if let Some(a) = args.get(2) {
                eval(a, &e)
            } else {
                Ok(Vec::new())
            }
        }
        Func::ToBoolean
        | Func::ToInteger
        | Func::ToDecimal
        | Func::ToString
        | Func::ToDate
        | Func::ToDateTime
        | Func::ToTime => opt(input_val(&input, name)?.and_then(|v| convert(f, &v))),
        Func::ConvertsToBoolean
        | Func::ConvertsToInteger
        | Func::ConvertsToDecimal
        | Func::ConvertsToString
        | Func::ConvertsToDate
        | Func::ConvertsToDateTime
        | Func::ConvertsToTime => {
            let target = match f {
                Func::ConvertsToBoolean => Func::ToBoolean,
                Func::ConvertsToInteger => Func::ToInteger,
                Func::ConvertsToDecimal => Func::ToDecimal,
                Func::ConvertsToString => Func::ToString,
                Func::ConvertsToDate => Func::ToDate,
                Func::ConvertsToDateTime => Func::ToDateTime,
                _ => Func::ToTime,
            };
            conv_check(&input, name, |v| convert(target, v).is_some())
        }
        Func::ToQuantity | Func::ConvertsToQuantity => {
            let unit = arg_string(args, 0, env, name)?;
            let Some(v) = input_val(&input, name)? else {
                return Ok(Vec::new());
            };
            let q = to_quantity(&v).and_then(|q| match &unit {
                None => Some(q),
                Some(u) if *u == q.unit => Some(q),
                Some(u) => convert_to(&q, u).map(|value| Quantity {
                    value,
                    unit: u.clone(),
                }),
            });
            if name == "toQuantity" {
                opt(q.map(Item::Quantity))
            } else {
                one(Item::Boolean(q.is_some()))
            }
        }
        // ---- strings
        Func::IndexOf | Func::LastIndexOf => {
            let Some(s) = input_string(&input, name)? else {
                return Ok(Vec::new());
            };
            let Some(sub) = arg_string(args, 0, env, name)? else {
                return Ok(Vec::new());
            };
            let pos = if name == "indexOf" {
                s.find(&sub)
            } else {
                s.rfind(&sub)
            };
            one(Item::Integer(
                pos.map(|p| s[..p].chars().count() as i64).unwrap_or(-1),
            ))
        }
        Func::Substring => {
            let Some(s) = input_string(&input, name)? else {
                return Ok(Vec::new());
            };
            let Some(start) = arg_int(args, 0, env, name)? else {
                return Ok(Vec::new());
            };
            let len = if args.len() > 1 {
                arg_int(args, 1, env, name)?
            } else {
                None
            };
            let chars: Vec<char> = s.chars().collect();
            if start < 0 || start as usize >= chars.len() {
                return Ok(Vec::new());
            }
            let end = match len {
                Some(l) if l <= 0 => return one(str_item("")),
                Some(l) => (start as usize).saturating_add(l as usize).min(chars.len()),
                None => chars.len(),
            };
            one(str_item(
                chars[start as usize..end].iter().collect::<String>(),
            ))
        }
        Func::StartsWith | Func::EndsWith | Func::Contains => {
            let Some(s) = input_string(&input, name)? else {
                return Ok(Vec::new());
            };
            let Some(sub) = arg_string(args, 0, env, name)? else {
                return Ok(Vec::new());
            };
            one(Item::Boolean(match name {
                "startsWith" => s.starts_with(&sub),
                "endsWith" => s.ends_with(&sub),
                _ => s.contains(&sub),
            }))
        }
        Func::Upper | Func::Lower | Func::Trim | Func::Length | Func::ToChars => {
            let Some(s) = input_string(&input, name)? else {
                return Ok(Vec::new());
            };
            match name {
                "upper" => one(str_item(s.to_uppercase())),
                "lower" => one(str_item(s.to_lowercase())),
                "trim" => one(str_item(s.trim())),
                "length" => one(Item::Integer(s.chars().count() as i64)),
                _ => Ok(s.chars().map(|c| str_item(c.to_string())).collect()),
            }
        }
        Func::Replace | Func::ReplaceMatches => {
            let Some(s) = input_string(&input, name)? else {
                return Ok(Vec::new());
            };
            let (Some(p), Some(r)) = (
                arg_string(args, 0, env, name)?,
                arg_string(args, 1, env, name)?,
            ) else {
                return Ok(Vec::new());
            };
            if f == Func::ReplaceMatches && p.is_empty() {
                return one(str_item(s));
            }
            // worst case: every position matches
            if (s.len() + 1).saturating_mul(r.len()) > crate::eval::MAX_STRING {
                return err(
                    "結果の文字列が長すぎます",
                    format!("{name}() result too long"),
                );
            }
            if f == Func::Replace {
                return one(str_item(s.replace(&p, &r)));
            }
            let re = compile_regex(&format!("(?s){p}"))?;
            one(str_item(re.replace_all(&s, r.as_str()).into_owned()))
        }
        Func::Matches | Func::MatchesFull => {
            let Some(s) = input_string(&input, name)? else {
                return Ok(Vec::new());
            };
            let Some(p) = arg_string(args, 0, env, name)? else {
                return Ok(Vec::new());
            };
            let re = if name == "matches" {
                format!("(?s){p}")
            } else {
                format!("(?s)^(?:{p})$")
            };
            let re = compile_regex(&re)?;
            one(Item::Boolean(re.is_match(&s)))
        }
        Func::Split => {
            let Some(s) = input_string(&input, name)? else {
                return Ok(Vec::new());
            };
            let Some(sep) = arg_string(args, 0, env, name)? else {
                return Ok(Vec::new());
            };
            if sep.is_empty() {
                return Ok(s.chars().map(|c| str_item(c.to_string())).collect());
            }
            Ok(s.split(sep.as_str()).map(str_item).collect())
        }
        Func::Join => {
            let sep = arg_string(args, 0, env, name)?.unwrap_or_default();
            let mut parts = Vec::with_capacity(input.len());
            for it in &input {
                match it.val() {
                    Some(v) => parts.push(val_to_string(&v)),
                    None => {
                        return err("join() は文字列の集合が必要です", "join() expects strings")
                    }
                }
            }
            one(str_item(parts.join(&sep)))
        }
        Func::Encode | Func::Decode | Func::Escape | Func::Unescape => {
            let Some(s) = input_string(&input, name)? else {
                return Ok(Vec::new());
            };
            let Some(fmt) = arg_string(args, 0, env, name)? else {
                return Ok(Vec::new());
            };
            opt(crate::strings::transform(name, &fmt, &s).map(str_item))
        }
        // ---- math
        Func::Abs
        | Func::Ceiling
        | Func::Floor
        | Func::Truncate
        | Func::Exp
        | Func::Ln
        | Func::Sqrt => {
            let Some(v) = input_val(&input, name)? else {
                return Ok(Vec::new());
            };
            math1(name, &v)
        }
        Func::Round => {
            let Some(v) = input_val(&input, name)? else {
                return Ok(Vec::new());
            };
            let p = arg_int(args, 0, env, name)?.unwrap_or(0);
            if !(0..=28).contains(&p) {
                return err(
                    "round() の精度が不正です",
                    "round() precision must be between 0 and 28",
                );
            }
            let d = num_of(&v, name)?;
            one(Item::Decimal(d.round_dp_with_strategy(
                p as u32,
                RoundingStrategy::MidpointAwayFromZero,
            )))
        }
        Func::Log | Func::Power => {
            let Some(v) = input_val(&input, name)? else {
                return Ok(Vec::new());
            };
            let a = arg(args, 0, env)?;
            let Some(b) = singleton(&a, name)?.and_then(|i| i.val()) else {
                return Ok(Vec::new());
            };
            let (x, y) = (num_of(&v, name)?, num_of(&b, name)?);
            if name == "log" {
                if x <= Decimal::ZERO || y <= Decimal::ZERO || y == Decimal::ONE {
                    return Ok(Vec::new());
                }
                let r = x
                    .checked_ln()
                    .zip(y.checked_ln())
                    .and_then(|(p, q)| p.checked_div(q));
                return opt(r.map(|d| Item::Decimal(approx(d))));
            }
            if let (Val::Int(bi), Val::Int(ei)) = (&v, &b) {
                if *ei >= 0 {
                    return opt(u32::try_from(*ei)
                        .ok()
                        .and_then(|e| bi.checked_pow(e))
                        .map(Item::Integer));
                }
            }
            if x < Decimal::ZERO && y.fract() != Decimal::ZERO {
                return Ok(Vec::new());
            }
            opt(x.checked_powd(y).map(|d| Item::Decimal(approx(d))))
        }
        // ---- tree navigation
        Func::Children => {
            let mut out = Vec::new();
            for it in &input {
                all_children(env.model(), it, &mut out);
            }
            Ok(out)
        }
        Func::Descendants => {
            let mut out = Vec::new();
            let mut frontier = input;
            let mut depth = 0;
            while !frontier.is_empty() && depth < 256 {
                depth += 1;
                let mut next = Vec::new();
                for it in &frontier {
                    all_children(env.model(), it, &mut next);
                }
                out.extend(next.iter().cloned());
                frontier = next;
            }
            Ok(out)
        }
        // ---- utility
        Func::Trace => {
            let label = arg_string(args, 0, env, name)?.unwrap_or_default();
            if let Some(t) = env.ctx.tracer {
                let shown = match args.get(1) {
                    Some(p) => {
                        let mut out = Vec::new();
                        each(&input, p, env, |_, _, r| {
                            out.extend(r);
                            Ok(true)
                        })?;
                        out
                    }
                    None => input.clone(),
                };
                t.trace(&label, &shown);
            }
            Ok(input)
        }
        Func::Now => one(Item::DateTime(env.now())),
        Func::Today => {
            let mut d = env.now();
            d.precision = Precision::Day;
            d.offset_minutes = None;
            d.hour = 0;
            d.minute = 0;
            d.second = 0;
            d.millisecond = 0;
            d.fraction_digits = 0;
            one(Item::Date(d))
        }
        Func::TimeOfDay => {
            let d = env.now();
            one(Item::Time(PartialTime {
                hour: d.hour,
                minute: d.minute,
                second: d.second,
                millisecond: d.millisecond,
                fraction_digits: 3,
                precision: Precision::Millisecond,
            }))
        }
        Func::Aggregate => {
            let mut total = arg(args, 1, env)?;
            for (i, it) in input.iter().enumerate() {
                let focus = std::slice::from_ref(it);
                let e = Env {
                    ctx: env.ctx,
                    focus,
                    index: Some(i),
                    total: Some(&total),
                    context: env.context,
                    now: env.now,
                };
                total = eval(&args[0], &e)?;
            }
            Ok(total)
        }
        Func::Type => Ok(input
            .iter()
            .map(|it| {
                let (ns, n) = type_of(it);
                str_item(format!("{ns}.{n}"))
            })
            .collect()),
        Func::Not => bools(to_bool(&input)?.map(|b| !b)),
        Func::Sort => sort(input, args, env),
        Func::Sum | Func::Avg => {
            let Some(first) = input.first() else {
                return Ok(Vec::new());
            };
            let mut acc = first.clone();
            for it in &input[1..] {
                let (Some(a), Some(b)) = (acc.val(), it.val()) else {
                    return err(
                        "数値の集合が必要です",
                        format!("{name}() expects numbers or quantities"),
                    );
                };
                match crate::eval::arith(crate::parser::BinOp::Add, &a, &b)? {
                    Some(r) => acc = r,
                    None => return Ok(Vec::new()),
                }
            }
            if !matches!(acc.val(), Some(Val::Int(_) | Val::Dec(_) | Val::Qty(_))) {
                return err(
                    "数値の集合が必要です",
                    format!("{name}() expects numbers or quantities"),
                );
            }
            if f == Func::Sum {
                return opt(acc.to_system());
            }
            let n = Val::Int(input.len() as i64);
            let total = acc
                .val()
                .ok_or_else(|| EvalError::new("数値の集合が必要です", "avg() expects numbers"))?;
            let total = match total {
                Val::Int(i) => Val::Dec(Decimal::from(i)),
                other => other,
            };
            opt(crate::eval::arith(crate::parser::BinOp::Div, &total, &n)?)
        }
        Func::Min | Func::Max => {
            let mut best: Option<&Item<'a>> = None;
            for it in &input {
                best = match best {
                    None => Some(it),
                    Some(b) => match item_compare(it, b) {
                        Ok(Some(o)) => {
                            let better = if f == Func::Min {
                                o == Ordering::Less
                            } else {
                                o == Ordering::Greater
                            };
                            Some(if better { it } else { b })
                        }
                        Ok(None) => return Ok(Vec::new()),
                        Err(()) => {
                            return err(
                                "比較できない値があります",
                                format!("{name}() expects comparable values"),
                            )
                        }
                    },
                };
            }
            Ok(best.cloned().into_iter().collect())
        }
        Func::CheckModifiers => {
            let mut allowed: Vec<String> = Vec::new();
            for it in arg(args, 0, env)? {
                if let Some(Val::Str(s)) = it.val() {
                    allowed.extend(s.split(',').map(|x| x.trim().to_string()));
                }
            }
            for it in &input {
                let mods = it
                    .as_node()
                    .and_then(|v| v.get("modifierExtension"))
                    .and_then(Value::as_array);
                for m in mods.into_iter().flatten() {
                    let url = m.get("url").and_then(Value::as_str).unwrap_or("");
                    if !allowed.iter().any(|a| a == url) {
                        return err(
                            "未知の modifierExtension があります",
                            format!("unknown modifier extension '{url}'"),
                        );
                    }
                }
            }
            Ok(input)
        }
        Func::Slice => {
            let (Some(structure), Some(slice)) = (
                arg_string(args, 0, env, name)?,
                arg_string(args, 1, env, name)?,
            ) else {
                return Ok(Vec::new());
            };
            let Some(p) = env.ctx.profiles else {
                return err(
                    "slice() にはプロファイル情報が必要です",
                    "slice() needs a ProfileValidator",
                );
            };
            let mut out = Vec::new();
            for it in input {
                match p.slice_matches(&it, &structure, &slice) {
                    Some(true) => out.push(it),
                    Some(false) => {}
                    None => {
                        return err(
                            "不明なスライスです",
                            format!("unknown slice '{slice}' in {structure}"),
                        )
                    }
                }
            }
            Ok(out)
        }
        // ---- FHIR additions
        Func::Extension => {
            let Some(url) = arg_string(args, 0, env, name)? else {
                return Ok(Vec::new());
            };
            let mut exts = Vec::new();
            for it in &input {
                navigate(env.model(), it, "extension", &mut exts);
            }
            Ok(exts
                .into_iter()
                .filter(|e| {
                    e.as_node()
                        .and_then(|v| v.get("url"))
                        .and_then(Value::as_str)
                        == Some(url.as_str())
                })
                .collect())
        }
        Func::HasValue => one(Item::Boolean(match input.as_slice() {
            [Item::Node { value, .. }] => {
                !value.is_null() && !value.is_object() && !value.is_array()
            }
            [_] => true,
            _ => false,
        })),
        Func::GetValue => Ok(match input.as_slice() {
            [it @ Item::Node { value, .. }] if !value.is_object() && !value.is_null() => {
                it.to_system().into_iter().collect()
            }
            _ => Vec::new(),
        }),
        Func::Resolve => {
            let mut out = Vec::new();
            for it in &input {
                if let Some(r) = resolve(it, env) {
                    out.push(r);
                }
            }
            Ok(out)
        }
        Func::ConformsTo => {
            let Some(url) = arg_string(args, 0, env, name)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for it in &input {
                let Some(v) = it.as_node() else { continue };
                let verdict = match env.ctx.profiles {
                    Some(p) => p.conforms_to(v, &url),
                    None => None,
                };
                let verdict = match verdict {
                    Some(b) => b,
                    None => match url.strip_prefix("http://hl7.org/fhir/StructureDefinition/") {
                        Some(t) if env.model().is_type(t) => {
                            crate::model::derives_from(env.model(), it.type_name(), t)
                        }
                        _ => {
                            return err(
                                "不明なプロファイルです",
                                format!("unknown profile '{url}'"),
                            )
                        }
                    },
                };
                out.push(Item::Boolean(verdict));
            }
            Ok(out)
        }
        Func::MemberOf => {
            let Some(vs) = arg_string(args, 0, env, name)? else {
                return Ok(Vec::new());
            };
            let Some(it) = singleton(&input, name)? else {
                return Ok(Vec::new());
            };
            let Some(t) = env.ctx.terminology else {
                return Ok(Vec::new());
            };
            bools(t.member_of(it, &vs))
        }
        Func::Subsumes | Func::SubsumedBy => {
            let other = arg(args, 0, env)?;
            let (Some(a), Some(b)) = (singleton(&input, name)?, singleton(&other, name)?) else {
                return Ok(Vec::new());
            };
            let Some(t) = env.ctx.terminology else {
                return Ok(Vec::new());
            };
            bools(if name == "subsumes" {
                t.subsumes(a, b)
            } else {
                t.subsumes(b, a)
            })
        }
        Func::HtmlChecks | Func::Htmlchecks => {
            let Some(it) = singleton(&input, name)? else {
                return Ok(Vec::new());
            };
            let html = match it.val() {
                Some(Val::Str(s)) => s.to_string(),
                _ => return one(Item::Boolean(false)),
            };
            one(Item::Boolean(crate::strings::html_checks(&html)))
        }
        Func::LowBoundary | Func::HighBoundary => {
            let Some(v) = input_val(&input, name)? else {
                return Ok(Vec::new());
            };
            let p = arg_int(args, 0, env, name)?;
            let high = name == "highBoundary";
            opt(match v {
                Val::Int(i) => dec_boundary(Decimal::from(i), p, high).map(Item::Decimal),
                Val::Dec(d) => dec_boundary(d, p, high).map(Item::Decimal),
                Val::Qty(q) => dec_boundary(q.value, p, high).map(|value| {
                    Item::Quantity(Quantity {
                        value,
                        unit: q.unit.clone(),
                    })
                }),
                Val::Date(d) => d.boundary(p, high, true).map(Item::Date),
                Val::DateTime(d) => d.boundary(p, high, false).map(Item::DateTime),
                Val::Time(t) => t.boundary(p, high).map(Item::Time),
                _ => None,
            })
        }
        Func::Precision => {
            let Some(v) = input_val(&input, name)? else {
                return Ok(Vec::new());
            };
            opt(match v {
                Val::Dec(d) => Some(Item::Integer(d.scale() as i64)),
                Val::Int(_) => Some(Item::Integer(0)),
                Val::Date(d) | Val::DateTime(d) => Some(Item::Integer(d.precision_digits())),
                Val::Time(t) => Some(Item::Integer(t.precision_digits())),
                _ => None,
            })
        }
        Func::Comparable => {
            let other = arg(args, 0, env)?;
            let (Some(Val::Qty(a)), Some(b)) = (input_val(&input, name)?, singleton(&other, name)?)
            else {
                return Ok(Vec::new());
            };
            match b.val() {
                Some(Val::Qty(b)) => one(Item::Boolean(quantities_comparable(&a, &b))),
                _ => one(Item::Boolean(false)),
            }
        }
    }
}

/// Compiles a regular expression, reusing a per-thread cache (invariants and
/// search expressions use the same few patterns over and over).
/// Shared (`Rc`), not cloned: a cloned `Regex` gets a fresh, cold match cache.
fn compile_regex(p: &str) -> Result<std::rc::Rc<regex::Regex>, EvalError> {
    thread_local! {
        static CACHE: std::cell::RefCell<std::collections::HashMap<String, std::rc::Rc<regex::Regex>>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    if let Some(re) = CACHE.with(|c| c.borrow().get(p).cloned()) {
        return Ok(re);
    }
    let re = regex::RegexBuilder::new(p)
        .size_limit(1 << 20)
        .build()
        .map(std::rc::Rc::new)
        .map_err(|e| {
            EvalError::new(
                "正規表現が不正です",
                format!("invalid regular expression: {e}"),
            )
        })?;
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= 512 {
            c.clear();
        }
        c.insert(p.to_string(), std::rc::Rc::clone(&re));
    });
    Ok(re)
}

/// The `toX()` conversions (`target` is one of the `To…` functions).
fn convert(target: Func, v: &Val<'_>) -> Option<Item<'static>> {
    match target {
        Func::ToBoolean => to_boolean(v).map(Item::Boolean),
        Func::ToInteger => to_integer(v).map(Item::Integer),
        Func::ToDecimal => to_decimal(v).map(Item::Decimal),
        Func::ToString => Some(Item::String(val_to_string(v))),
        Func::ToDate => to_date(v).map(Item::Date),
        Func::ToDateTime => to_datetime(v).map(Item::DateTime),
        Func::ToTime => to_time(v).map(Item::Time),
        _ => None,
    }
}

fn conv_check<'a>(input: &[Item<'a>], name: &str, f: impl Fn(&Val<'_>) -> bool) -> R<'a> {
    match singleton(input, name)? {
        None => Ok(Vec::new()),
        Some(it) => one(Item::Boolean(it.val().is_some_and(|v| f(&v)))),
    }
}

fn num_of(v: &Val<'_>, f: &str) -> Result<Decimal, EvalError> {
    crate::eval::num(v)
        .ok_or_else(|| EvalError::new("数値が必要です", format!("{f}() expects a number")))
}

fn math1<'a>(name: &str, v: &Val<'_>) -> R<'a> {
    if let Val::Qty(q) = v {
        if name == "abs" {
            return one(Item::Quantity(Quantity {
                value: q.value.abs(),
                unit: q.unit.clone(),
            }));
        }
    }
    if let Val::Int(i) = v {
        match name {
            "abs" => return opt(i.checked_abs().map(Item::Integer)),
            "ceiling" | "floor" | "truncate" => return one(Item::Integer(*i)),
            _ => {}
        }
    }
    let d = num_of(v, name)?;
    let to_int = |d: Decimal| d.to_i64().map(Item::Integer);
    match name {
        "abs" => one(Item::Decimal(d.abs())),
        "ceiling" => opt(to_int(d.ceil())),
        "floor" => opt(to_int(d.floor())),
        "truncate" => opt(to_int(d.trunc())),
        "exp" => opt(d.checked_exp().map(|x| Item::Decimal(approx(x)))),
        "ln" => {
            if d <= Decimal::ZERO {
                return Ok(Vec::new());
            }
            opt(d.checked_ln().map(|x| Item::Decimal(approx(x))))
        }
        _ => {
            if d < Decimal::ZERO {
                return Ok(Vec::new());
            }
            opt(d.sqrt().map(|x| Item::Decimal(approx(x))))
        }
    }
}

/// `lowBoundary`/`highBoundary` of a decimal: the value ± half a unit of its last
/// digit, cut to `p` digits (default 8). For non-negative values the low boundary
/// is truncated and the high boundary rounded half-up; negative values mirror the
/// boundaries of their absolute value (this reproduces every case of the official suite).
fn dec_boundary(d: Decimal, p: Option<i64>, high: bool) -> Option<Decimal> {
    let p = p.unwrap_or(8);
    if !(0..=28).contains(&p) {
        return None;
    }
    if d.is_sign_negative() && !d.is_zero() {
        return dec_boundary(-d, Some(p), !high).map(|r| -r);
    }
    let half = Decimal::try_new(5, d.scale() + 1).ok()?;
    let mut r = if high {
        d.checked_add(half)?
            .round_dp_with_strategy(p as u32, RoundingStrategy::MidpointAwayFromZero)
    } else {
        d.checked_sub(half)?
            .round_dp_with_strategy(p as u32, RoundingStrategy::ToZero)
    };
    r.rescale(p as u32);
    Some(r)
}

fn type_of(it: &Item<'_>) -> (&'static str, String) {
    match it {
        Item::Node { type_code, .. } => ("FHIR", type_code.to_string()),
        other => ("System", other.type_name().to_string()),
    }
}

/// `type().name` / `type().namespace` support (see `eval`).
pub(crate) fn type_member<'a>(input: &[Item<'a>], member: &str) -> Coll<'a> {
    input
        .iter()
        .filter_map(|it| {
            let (ns, n) = type_of(it);
            match member {
                "namespace" => Some(str_item(ns)),
                "name" => Some(str_item(n)),
                _ => None,
            }
        })
        .collect()
}

fn to_boolean(v: &Val<'_>) -> Option<bool> {
    match v {
        Val::Bool(b) => Some(*b),
        Val::Int(1) => Some(true),
        Val::Int(0) => Some(false),
        Val::Dec(d) if *d == Decimal::ONE => Some(true),
        Val::Dec(d) if d.is_zero() => Some(false),
        Val::Str(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(true),
            "false" | "f" | "no" | "n" | "0" | "0.0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn is_int_text(s: &str) -> bool {
    let d = s.strip_prefix(['+', '-']).unwrap_or(s);
    !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
}

fn to_integer(v: &Val<'_>) -> Option<i64> {
    match v {
        Val::Int(i) => Some(*i),
        Val::Bool(b) => Some(*b as i64),
        Val::Str(s) if is_int_text(s) => s.parse().ok(),
        _ => None,
    }
}

fn is_dec_text(s: &str) -> bool {
    let d = s.strip_prefix(['+', '-']).unwrap_or(s);
    match d.split_once('.') {
        Some((a, b)) => {
            is_int_text(a)
                && !a.starts_with(['+', '-'])
                && !b.is_empty()
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => is_int_text(d) && !d.starts_with(['+', '-']),
    }
}

fn to_decimal(v: &Val<'_>) -> Option<Decimal> {
    match v {
        Val::Int(i) => Some(Decimal::from(*i)),
        Val::Dec(d) => Some(*d),
        Val::Bool(b) => Some(if *b { Decimal::ONE } else { Decimal::ZERO }),
        Val::Str(s) if is_dec_text(s) => Decimal::from_str(s).ok(),
        _ => None,
    }
}

fn to_date(v: &Val<'_>) -> Option<PartialDateTime> {
    match v {
        Val::Date(d) => Some(*d),
        Val::DateTime(d) => {
            let mut d = *d;
            if d.precision > Precision::Day {
                d.precision = Precision::Day;
                d.offset_minutes = None;
            }
            Some(d)
        }
        Val::Str(s) => PartialDateTime::parse_literal(s).map(|(mut d, _)| {
            if d.precision > Precision::Day {
                d.precision = Precision::Day;
                d.offset_minutes = None;
            }
            d
        }),
        _ => None,
    }
}

fn to_datetime(v: &Val<'_>) -> Option<PartialDateTime> {
    match v {
        Val::Date(d) | Val::DateTime(d) => Some(*d),
        Val::Str(s) => PartialDateTime::parse_datetime(s),
        _ => None,
    }
}

fn to_time(v: &Val<'_>) -> Option<PartialTime> {
    match v {
        Val::Time(t) => Some(*t),
        Val::Str(s) => PartialTime::parse(s.strip_prefix('T').unwrap_or(s)),
        _ => None,
    }
}

fn to_quantity(v: &Val<'_>) -> Option<Quantity> {
    match v {
        Val::Int(i) => Some(Quantity {
            value: Decimal::from(*i),
            unit: "1".into(),
        }),
        Val::Dec(d) => Some(Quantity {
            value: *d,
            unit: "1".into(),
        }),
        Val::Bool(b) => Some(Quantity {
            value: if *b { Decimal::ONE } else { Decimal::ZERO },
            unit: "1".into(),
        }),
        Val::Qty(q) => Some(q.clone().into_owned()),
        Val::Str(s) => {
            let s = s.trim();
            let (num, rest) = match s.find(' ') {
                Some(i) => (&s[..i], s[i..].trim()),
                None => (s, ""),
            };
            if !is_dec_text(num) {
                return None;
            }
            let value = Decimal::from_str(num).ok()?;
            let unit = if rest.is_empty() {
                "1".to_string()
            } else if rest.len() >= 2 && rest.starts_with('\'') && rest.ends_with('\'') {
                rest[1..rest.len() - 1].to_string()
            } else {
                let w = singular_calendar(rest);
                if !is_calendar_word(w) {
                    return None;
                }
                w.to_string()
            };
            Some(Quantity { value, unit })
        }
        _ => None,
    }
}

fn sort<'a>(input: Coll<'a>, args: &[Ast], env: &Env<'_, 'a>) -> R<'a> {
    // Each key: (expression, descending)
    let keys: Vec<(&Ast, bool)> = args
        .iter()
        .map(|a| match a {
            Ast::Neg(inner) => (&**inner, true),
            other => (other, false),
        })
        .collect();
    let mut rows: Vec<(Vec<Option<Item<'a>>>, Item<'a>)> = Vec::with_capacity(input.len());
    for (i, it) in input.into_iter().enumerate() {
        let mut kv = Vec::with_capacity(keys.len().max(1));
        if keys.is_empty() {
            kv.push(Some(it.clone()));
        } else {
            let focus = std::slice::from_ref(&it);
            let e = env.with_focus(focus, Some(i));
            for (k, _) in &keys {
                let r = eval(k, &e)?;
                kv.push(singleton(&r, "sort")?.cloned());
            }
        }
        rows.push((kv, it));
    }
    let mut failed = false;
    rows.sort_by(|a, b| {
        for (j, (x, y)) in a.0.iter().zip(&b.0).enumerate() {
            let desc = keys.get(j).is_some_and(|k| k.1);
            let o = match (x, y) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (Some(x), Some(y)) => match item_compare(x, y) {
                    Ok(Some(o)) => o,
                    Ok(None) => Ordering::Equal,
                    Err(()) => {
                        failed = true;
                        Ordering::Equal
                    }
                },
            };
            // Empty keys sort first in either direction.
            let o = if desc && x.is_some() && y.is_some() {
                o.reverse()
            } else {
                o
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
    if failed {
        return err(
            "sort() のキーが比較できません",
            "sort() keys are not comparable",
        );
    }
    Ok(rows.into_iter().map(|r| r.1).collect())
}

/// Type name from a literal reference such as `Patient/123`, `http://x/fhir/Patient/123/_history/2`.
pub(crate) fn reference_type(r: &str) -> Option<&str> {
    let r = r.split(['?', '#']).next()?;
    let parts: Vec<&str> = r.split('/').collect();
    let n = parts.len();
    let idx = if n >= 4 && parts[n - 2] == "_history" {
        n.checked_sub(4)?
    } else {
        n.checked_sub(2)?
    };
    let t = parts.get(idx)?;
    if t.starts_with(|c: char| c.is_ascii_uppercase())
        && t.chars().all(|c| c.is_ascii_alphanumeric())
    {
        Some(t)
    } else {
        None
    }
}

fn resolve<'a>(it: &Item<'a>, env: &Env<'_, 'a>) -> Option<Item<'a>> {
    let Item::Node { value, .. } = it else {
        return None;
    };
    let (reference, type_hint): (Option<&'a str>, Option<&'a str>) = match value {
        Value::String(s) => (Some(s.as_str()), None),
        Value::Object(o) => (
            o.get("reference").and_then(Value::as_str),
            o.get("type").and_then(Value::as_str),
        ),
        _ => (None, None),
    };
    let ctx = env.ctx;
    if let Some(r) = reference {
        // contained resource
        if let Some(id) = r.strip_prefix('#') {
            for res in [ctx.resource, ctx.root_resource].into_iter().flatten() {
                if let Some(Value::Array(cs)) = res.get("contained") {
                    if let Some(c) = cs
                        .iter()
                        .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
                    {
                        return Some(Item::resource(c));
                    }
                }
                if id.is_empty() {
                    return Some(Item::resource(res));
                }
            }
        }
        // bundle entry
        if let Some(root) = ctx.root_resource {
            if root.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
                if let Some(Value::Array(entries)) = root.get("entry") {
                    for e in entries {
                        let full = e.get("fullUrl").and_then(Value::as_str);
                        let res = e.get("resource");
                        let matches = full == Some(r)
                            || (full.is_some_and(|f| f.ends_with(r) && f[..f.len() - r.len()].ends_with('/')))
                            || res.is_some_and(|res| {
                                let rt = res.get("resourceType").and_then(Value::as_str);
                                let id = res.get("id").and_then(Value::as_str);
                                matches!((rt, id), (Some(t), Some(i)) if r.len() == t.len() + 1 + i.len() && r.starts_with(t) && r.ends_with(i) && r.as_bytes()[t.len()] == b'/')
                            });
                        if matches {
                            if let Some(res) = res {
                                return Some(Item::resource(res));
                            }
                        }
                    }
                }
            }
        }
        if let Some(res) = ctx.resolver.and_then(|rv| rv.resolve(r)) {
            return Some(Item::resource(res));
        }
    }
    // Unresolvable: still report the target type when it is known from the reference.
    let t = reference.and_then(reference_type).or(type_hint)?;
    Some(Item::Node {
        value: &EMPTY_OBJECT,
        type_code: Cow::Borrowed(t),
        extension: None,
        model_path: Cow::Borrowed(t),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_table_matches_enum_order() {
        for (i, (name, f, _, _)) in FUNCTIONS.iter().enumerate() {
            assert_eq!(*f as usize, i, "{name}");
            assert_eq!(f.name(), *name);
        }
    }
}
