//! FHIRPath (N1 + FHIR R4 additions) parser and evaluator over `serde_json::Value` resources.
//!
//! Used by search-parameter index extraction (every SearchParameter expression),
//! by the profile validator (invariants) and anywhere else iryo needs FHIRPath.
//! Expressions are compiled once ([`parse`]) and evaluated many times; results are
//! [`Item`]s that either point into the resource JSON (with their FHIR type) or
//! are System values (Boolean, String, Integer, Decimal, Date, DateTime, Time, Quantity).
//! Decimals are exact (`rust_decimal`), never `f64`.
//!
//! ```
//! use iryo_fhirpath::{parse, Context, Item};
//! use serde_json::json;
//!
//! let patient = json!({"resourceType": "Patient", "birthDate": "1974-12-25",
//!                      "name": [{"family": "山田", "given": ["太郎"]}]});
//! let expr = parse("Patient.name.where(family = '山田').given.first()").unwrap();
//! let ctx = Context::new(&patient);
//! let out = expr.evaluate(&ctx, &patient).unwrap();
//! assert_eq!(out[0].to_fhirpath_string().as_deref(), Some("太郎"));
//!
//! let adult = parse("birthDate <= today() - 18 years").unwrap();
//! assert_eq!(adult.evaluate_bool(&ctx, &patient).unwrap(), Some(true));
//!
//! // Node items carry their FHIR type, e.g. for search indexing:
//! let bd = parse("Patient.birthDate").unwrap().evaluate(&ctx, &patient).unwrap();
//! assert!(matches!(&bd[0], Item::Node { type_code, .. } if type_code == "date"));
//! let obs = json!({"resourceType": "Observation", "valueQuantity": {"value": 5.0, "unit": "mg"}});
//! let v = parse("Observation.value").unwrap().evaluate(&Context::new(&obs), &obs).unwrap();
//! assert!(matches!(&v[0], Item::Node { type_code, .. } if type_code == "Quantity"));
//! ```
//!
//! ## What the engine provides
//!
//! * The full N1 grammar (literals incl. date/time/quantity, `|`, `is`/`as`,
//!   indexers, `$this`/`$index`/`$total`, environment variables `%resource`,
//!   `%rootResource`, `%context`, `%ucum`, `%sct`, `%loinc`, `%vs-…`, `%ext-…`,
//!   user variables), three-valued logic and all standard functions, plus the
//!   FHIR additions `extension()`, `hasValue()`, `getValue()`, `resolve()`,
//!   `ofType()`, `conformsTo()`, `memberOf()`, `subsumes()`, `htmlChecks()`,
//!   `checkModifiers()`, `slice()` and the 2.x functions the R4 suite uses.
//! * Element types from the R4 model of `iryo-fhir-spec` (choice elements,
//!   `_name` primitive extensions, backbone elements, contained resources).
//! * Callbacks through [`Context`]: [`Resolver`] for `resolve()` (contained
//!   and Bundle references are resolved internally; an unresolvable
//!   `Patient/123` still yields a node of type `Patient`), [`Terminology`] for
//!   `memberOf()`, [`ProfileValidator`] for `conformsTo()`/`slice()`,
//!   [`Tracer`] for `trace()`, a fixed `now()` for tests.
//! * Errors never panic: [`ParseError`] carries the byte position, both
//!   error types carry Japanese and English messages. Expression depth/size and
//!   result sizes are bounded.
//!
//! See `CONFORMANCE.md` for the official suite result (931/935) and the
//! deliberate deviations.

mod error;
mod eval;
mod functions;
mod lexer;
pub mod model;
mod parser;
mod strings;
mod temporal;
mod ucum;
mod value;

pub use error::{EvalError, ParseError};
pub use model::{BuiltinTypes, ChildType, TypeInfo};
pub use temporal::{PartialDateTime, PartialTime, Precision};
pub use value::{str_equiv, Item, Quantity};

use chrono::{Datelike, Timelike};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// A compiled FHIRPath expression: immutable, cheap to clone, `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Expression {
    ast: Arc<parser::Ast>,
    source: Arc<str>,
}

/// Parses (compiles) a FHIRPath expression.
pub fn parse(src: &str) -> Result<Expression, ParseError> {
    let ast = parser::parse_ast(src)?;
    Ok(Expression {
        ast: Arc::new(ast),
        source: Arc::from(src),
    })
}

/// Resolves literal references for `resolve()` (e.g. from a store or a Bundle).
/// References to contained resources (`#id`) and to entries of a Bundle that is
/// the root resource are resolved by the engine itself.
pub trait Resolver: Sync {
    /// The resource a reference (`Patient/123`, absolute URL, `urn:uuid:…`) points to.
    fn resolve(&self, reference: &str) -> Option<&Value>;
}

impl Resolver for HashMap<String, Value> {
    fn resolve(&self, reference: &str) -> Option<&Value> {
        self.get(reference)
    }
}

/// Terminology services for `memberOf()`, `subsumes()` and `subsumedBy()`.
pub trait Terminology: Sync {
    /// Whether the code/Coding/CodeableConcept `item` is in the value set `value_set` (canonical URL).
    /// `None` when unknown (the function then returns empty).
    fn member_of(&self, item: &Item<'_>, value_set: &str) -> Option<bool>;
    /// Whether code `a` subsumes code `b`; `None` when unknown.
    fn subsumes(&self, _a: &Item<'_>, _b: &Item<'_>) -> Option<bool> {
        None
    }
}

/// Profile checks for `conformsTo()` and `slice()`.
pub trait ProfileValidator: Sync {
    /// Whether `resource` conforms to the profile `url`; `None` if the profile is unknown.
    fn conforms_to(&self, resource: &Value, url: &str) -> Option<bool>;
    /// For `slice(structure, name)`: whether `item` belongs to slice `name` of the
    /// profile `structure`; `None` if the profile or slice is unknown.
    fn slice_matches(&self, _item: &Item<'_>, _structure: &str, _slice: &str) -> Option<bool> {
        None
    }
}

/// Receives `trace()` output.
pub trait Tracer: Sync {
    fn trace(&self, label: &str, items: &[Item<'_>]);
}

/// Evaluation context: the resource (`%resource`, `%context`), the root resource
/// (`%rootResource`), user variables, and optional callbacks.
pub struct Context<'a> {
    pub(crate) resource: Option<&'a Value>,
    pub(crate) root_resource: Option<&'a Value>,
    pub(crate) vars: HashMap<String, Vec<Item<'a>>>,
    pub(crate) resolver: Option<&'a dyn Resolver>,
    pub(crate) terminology: Option<&'a dyn Terminology>,
    pub(crate) profiles: Option<&'a dyn ProfileValidator>,
    pub(crate) tracer: Option<&'a dyn Tracer>,
    pub(crate) now: Option<PartialDateTime>,
    pub(crate) model: &'a dyn TypeInfo,
    pub(crate) strict: bool,
}

impl<'a> Context<'a> {
    /// A context whose `%resource` and `%rootResource` are `resource`.
    pub fn new(resource: &'a Value) -> Self {
        Context {
            resource: Some(resource),
            root_resource: None,
            vars: HashMap::new(),
            resolver: None,
            terminology: None,
            profiles: None,
            tracer: None,
            now: None,
            model: model::default_model(),
            strict: false,
        }
    }

    /// A context without a resource (for expressions on literals only).
    pub fn empty() -> Context<'static> {
        Context {
            resource: None,
            root_resource: None,
            vars: HashMap::new(),
            resolver: None,
            terminology: None,
            profiles: None,
            tracer: None,
            now: None,
            model: model::default_model(),
            strict: false,
        }
    }

    /// Sets `%rootResource` (e.g. the Bundle or the container of a contained resource).
    pub fn with_root_resource(mut self, root: &'a Value) -> Self {
        self.root_resource = Some(root);
        self
    }

    /// Defines `%name`.
    pub fn with_variable(mut self, name: &str, value: Vec<Item<'a>>) -> Self {
        self.vars.insert(name.to_string(), value);
        self
    }

    /// Callback for `resolve()`.
    pub fn with_resolver(mut self, r: &'a dyn Resolver) -> Self {
        self.resolver = Some(r);
        self
    }

    /// Callback for `memberOf()`/`subsumes()`.
    pub fn with_terminology(mut self, t: &'a dyn Terminology) -> Self {
        self.terminology = Some(t);
        self
    }

    /// Callback for `conformsTo()`.
    pub fn with_profile_validator(mut self, p: &'a dyn ProfileValidator) -> Self {
        self.profiles = Some(p);
        self
    }

    /// Receiver for `trace()`.
    pub fn with_tracer(mut self, t: &'a dyn Tracer) -> Self {
        self.tracer = Some(t);
        self
    }

    /// Fixes the value of `now()`/`today()`/`timeOfDay()` (for tests and reproducible runs).
    pub fn with_now(mut self, now: PartialDateTime) -> Self {
        self.now = Some(now);
        self
    }

    /// Uses another source of type information.
    pub fn with_model(mut self, model: &'a dyn TypeInfo) -> Self {
        self.model = model;
        self
    }

    /// Strict mode: navigation to elements that do not exist on a known type
    /// and non-boolean `iif()` criteria are errors.
    pub fn strict(mut self, on: bool) -> Self {
        self.strict = on;
        self
    }

    pub(crate) fn now_value(&self) -> PartialDateTime {
        if let Some(n) = self.now {
            return n;
        }
        let now = chrono::Local::now();
        PartialDateTime {
            year: now.year(),
            month: now.month() as u8,
            day: now.day() as u8,
            hour: now.hour() as u8,
            minute: now.minute() as u8,
            second: now.second() as u8,
            millisecond: (now.nanosecond() / 1_000_000).min(999) as u16,
            fraction_digits: 3,
            precision: Precision::Millisecond,
            offset_minutes: Some((now.offset().local_minus_utc() / 60) as i16),
        }
    }
}

impl Expression {
    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The child names through which the expression reads its input, when it reads the input
    /// *only* by navigating to children with these names: no `$this`/`$index`/`$total`, no
    /// environment variable (`%resource`…), no function or type test applied to the input
    /// itself, no type name as a first step, and no function that depends on anything but
    /// its arguments (`resolve()`, `memberOf()`, `today()`, `children()`…). Names inside
    /// function arguments are included, so the list may be longer than needed.
    ///
    /// For such an expression, an input that has none of these children (nor `_name` or a
    /// choice variant `nameX`) gives the same result as an empty element, which lets callers
    /// evaluate it once instead of per input (e.g. `contained.contained.empty()`).
    /// `None` when the expression does not have this form.
    pub fn focus_names(&self) -> Option<Vec<String>> {
        let mut out = Vec::new();
        focus_names(&self.ast, &mut out)?;
        Some(out)
    }

    /// Evaluates against `input` (a resource, or any element; a JSON object with
    /// `resourceType` is typed by it).
    pub fn evaluate<'a>(
        &self,
        ctx: &Context<'a>,
        input: &'a Value,
    ) -> Result<Vec<Item<'a>>, EvalError> {
        let item = if value::resource_type(input).is_some() {
            Item::resource(input)
        } else {
            Item::node(input, "Element")
        };
        self.evaluate_items(ctx, vec![item])
    }

    /// Evaluates against an element of a known FHIR type (e.g. `HumanName`, or a
    /// model path like `Patient.contact`).
    pub fn evaluate_typed<'a>(
        &self,
        ctx: &Context<'a>,
        input: &'a Value,
        type_code: impl Into<std::borrow::Cow<'a, str>>,
    ) -> Result<Vec<Item<'a>>, EvalError> {
        self.evaluate_items(ctx, vec![Item::node(input, type_code)])
    }

    /// Evaluates against an arbitrary input collection.
    pub fn evaluate_items<'a>(
        &self,
        ctx: &Context<'a>,
        input: Vec<Item<'a>>,
    ) -> Result<Vec<Item<'a>>, EvalError> {
        with_env(ctx, &input, |env| eval::eval(&self.ast, env))
    }

    /// Whether the expression yields at most one Boolean by its form: `and`, `or`, `xor`,
    /// `implies`, `=`, `!=`, or `exists()`/`empty()`/`not()` at the top. Such an expression
    /// can be evaluated with [`Expression::evaluate_boolean`].
    pub fn has_boolean_form(&self) -> bool {
        use parser::{Ast, BinOp};
        match &*self.ast {
            Ast::Bin(op, _, _) => matches!(
                op,
                BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Implies | BinOp::Eq | BinOp::NotEq
            ),
            Ast::Call(Some(_), f, args) => {
                args.is_empty()
                    && matches!(
                        f,
                        functions::Func::Exists | functions::Func::Empty | functions::Func::Not
                    )
            }
            _ => false,
        }
    }

    /// For an expression of [boolean form](Expression::has_boolean_form): its result
    /// (`None` = empty, `Some(b)` = the single Boolean) computed without building the
    /// intermediate collections. The input is typed as in [`Expression::evaluate`] (no
    /// `type_code`) or [`Expression::evaluate_typed`]. For other expressions the result is
    /// the singleton-boolean reading of [`Expression::evaluate`] (an error for several items).
    pub fn evaluate_boolean<'a>(
        &self,
        ctx: &Context<'a>,
        input: &'a Value,
        type_code: Option<&'a str>,
    ) -> Result<Option<bool>, EvalError> {
        let item = match type_code {
            Some(t) => Item::node(input, t),
            None if value::resource_type(input).is_some() => Item::resource(input),
            None => Item::node(input, "Element"),
        };
        with_env(ctx, &[item], |env| eval::eval_bool(&self.ast, env))
    }

    /// Singleton-boolean evaluation as used for invariants: empty → `None`,
    /// a single Boolean → its value, a single other item → `true`, several items → error.
    pub fn evaluate_bool(
        &self,
        ctx: &Context<'_>,
        input: &Value,
    ) -> Result<Option<bool>, EvalError> {
        let out = self.evaluate(ctx, input)?;
        eval::to_bool(&out)
    }
}

/// Runs `f` with the top-level environment for `input` (`$this` and `%context`).
fn with_env<'a, T>(
    ctx: &Context<'a>,
    input: &[Item<'a>],
    f: impl FnOnce(&eval::Env<'_, 'a>) -> T,
) -> T {
    let now = std::cell::OnceCell::new();
    f(&eval::Env {
        ctx,
        focus: input,
        index: None,
        total: None,
        context: input,
        now: &now,
    })
}

fn focus_names(a: &parser::Ast, out: &mut Vec<String>) -> Option<()> {
    use functions::Func;
    use parser::Ast;
    match a {
        Ast::Empty | Ast::Lit(_) => Some(()),
        Ast::This | Ast::Index | Ast::Total | Ast::Env(_) => None,
        Ast::Member(None, n) => {
            if n.starts_with(|c: char| c.is_ascii_uppercase()) {
                return None;
            }
            if !out.contains(n) {
                out.push(n.clone());
            }
            Some(())
        }
        Ast::Member(Some(t), n) => {
            focus_names(t, out)?;
            if !out.contains(n) {
                out.push(n.clone());
            }
            Some(())
        }
        Ast::Call(None, _, _) | Ast::TypeOp(None, _, _) => None,
        Ast::Call(Some(t), f, args) => {
            if matches!(
                f,
                Func::Now
                    | Func::Today
                    | Func::TimeOfDay
                    | Func::Resolve
                    | Func::ConformsTo
                    | Func::MemberOf
                    | Func::Subsumes
                    | Func::SubsumedBy
                    | Func::Trace
                    | Func::Aggregate
                    | Func::Iif
                    | Func::Slice
                    | Func::CheckModifiers
                    | Func::HtmlChecks
                    | Func::Htmlchecks
                    | Func::Children
                    | Func::Descendants
                    | Func::Coalesce
                    | Func::Type
            ) {
                return None;
            }
            focus_names(t, out)?;
            args.iter().try_for_each(|a| focus_names(a, out))
        }
        Ast::TypeOp(Some(t), _, _) | Ast::Neg(t) => focus_names(t, out),
        Ast::Indexer(a, b) | Ast::Bin(_, a, b) => {
            focus_names(a, out)?;
            focus_names(b, out)
        }
    }
}
