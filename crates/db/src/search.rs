//! Running searches: a [`SearchQuery`] becomes one SQL statement over the index tables.
//!
//! Every clause is a set of resource keys (`rid`), found by a range scan of one index table whose
//! primary key starts with (tenant, type, param, value…); clauses are intersected with `IN`,
//! values of one clause ORed. Chains and `_has` nest the same construction. The tenant is a bound
//! parameter of every subquery, so no clause can reach another tenant's rows.

use crate::sql::{Sql, P};
use crate::store::{read_rids, type_code, Inner2, StoredResource};
use crate::DbError;
use iryo_fhir_spec::SearchParamType as K;
use iryo_search::date::{MAX_MS, MIN_MS};
use iryo_search::index::param_key;
use iryo_search::normalize::{normalize_string, prefix_upper_bound};
use iryo_search::query::{Clause, Include, Modifier, Prefix, SearchQuery, Summary, Total, Value};
use iryo_search::IndexValue;
use std::collections::{HashMap, HashSet};

pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 1000;
const MAX_INCLUDES: usize = 2000;

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: SearchQuery,
    /// A page token from an earlier page's `next` link.
    pub page_token: Option<String>,
    /// `_has`/chain targets and base URL handling need nothing else from the REST layer.
    pub base_url: String,
}

#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    pub matches: Vec<StoredResource>,
    pub includes: Vec<StoredResource>,
    pub total: Option<i64>,
    pub offset: usize,
    pub count: usize,
    /// Token for the next/previous pages (the same for all pages of one search).
    pub token: Option<String>,
    pub has_next: bool,
}

/// SQL under construction: text plus bound parameters.
struct Q {
    p: Vec<P>,
}

impl Q {
    fn bind(&mut self, v: P) -> String {
        self.p.push(v);
        format!("${}", self.p.len())
    }
}

fn unsupported(what: &str) -> DbError {
    DbError::Invalid(format!("未対応の検索です (unsupported search): {what}"))
}

/// Compile one clause as a condition on the resource alias `r` of type `tcode`.
fn clause_sql(
    q: &mut Q,
    tenant: &str,
    r: &str,
    tcode: &str,
    c: &Clause,
    depth: usize,
) -> Result<String, DbError> {
    match c {
        Clause::Param {
            code,
            kind,
            modifier,
            values,
            components,
        } => {
            if code == "_id" {
                let mut ors = vec![];
                for v in values {
                    match v {
                        Value::Token { code: Some(id), .. } => {
                            let b = q.bind(P::T(id.clone()));
                            ors.push(format!("{r}.id = {b}"));
                        }
                        Value::Missing(_) => ors.push("1 = 0".into()),
                        _ => return Err(unsupported("_id")),
                    }
                }
                let cond = format!("({})", ors.join(" OR "));
                return Ok(if *modifier == Modifier::Not {
                    format!("NOT {cond}")
                } else {
                    cond
                });
            }
            if code == "_lastUpdated" {
                let mut ors = vec![];
                for v in values {
                    if let Value::Date { prefix, range } = v {
                        ors.push(range_cond(
                            q,
                            &format!("{r}.last_updated"),
                            &format!("{r}.last_updated"),
                            *prefix,
                            range.lo,
                            range.hi,
                        ));
                    }
                }
                return Ok(format!("({})", ors.join(" OR ")));
            }
            if let [Value::Missing(m)] = values.as_slice() {
                let table = family_table(*kind, modifier);
                let pk = q.bind(P::I(param_key(&param_name(code, modifier))));
                let sub = format!("SELECT s.rid FROM {table} s WHERE s.tenant = {tenant} AND s.type = {tcode} AND s.param = {pk}");
                return Ok(if *m {
                    format!("{r}.rid NOT IN ({sub})")
                } else {
                    format!("{r}.rid IN ({sub})")
                });
            }
            if *kind == K::Composite {
                // Approximation: every component matches on the same resource.
                let mut ands = vec![];
                for v in values {
                    let Value::Composite(parts) = v else { continue };
                    let mut inner = vec![];
                    for (part, (ccode, ckind)) in parts.iter().zip(components) {
                        let cl = Clause::Param {
                            code: ccode.clone(),
                            kind: *ckind,
                            modifier: Modifier::None,
                            values: vec![part.clone()],
                            components: vec![],
                        };
                        inner.push(clause_sql(q, tenant, r, tcode, &cl, depth)?);
                    }
                    ands.push(format!("({})", inner.join(" AND ")));
                }
                return Ok(format!("({})", ands.join(" OR ")));
            }
            let src = source(q, tenant, tcode, code, *kind, modifier, values)?;
            let sub = format!("SELECT s.rid FROM {} s WHERE {}", src.table, src.cond);
            Ok(if *modifier == Modifier::Not {
                format!("{r}.rid NOT IN ({sub})")
            } else {
                format!("{r}.rid IN ({sub})")
            })
        }
        Clause::Chain {
            ref_code,
            target_types,
            inner,
        } => chain_sql(
            q,
            tenant,
            r,
            tcode,
            ref_code,
            target_types,
            inner,
            depth,
            false,
        ),
        Clause::Has {
            source_type,
            ref_code,
            inner,
        } => {
            let src = type_code(source_type).ok_or_else(|| unsupported(source_type))?;
            let srcb = q.bind(P::I(src));
            let pk = q.bind(P::I(param_key(ref_code)));
            let alias = format!("h{depth}");
            let cond = clause_sql(q, tenant, &alias, &srcb, inner, depth + 1)?;
            Ok(format!(
                "{r}.id IN (SELECT s{depth}.target_id FROM sp_reference s{depth} WHERE s{depth}.tenant = {tenant} AND s{depth}.type = {srcb} AND s{depth}.param = {pk} AND s{depth}.target_type = {tcode} \
                 AND s{depth}.rid IN (SELECT {alias}.rid FROM resource {alias} WHERE {alias}.tenant = {tenant} AND {alias}.type = {srcb} AND {alias}.deleted = 0 AND {cond}))"
            ))
        }
    }
}

/// How one parameter clause reads its index table: the table, the conditions on alias `s`,
/// how selective it usually is (the lowest rank drives an index-driven search), and whether
/// finding one resource's rows is a seek (every primary-key column before `rid` is bound by
/// equality), so that the clause can be checked per candidate with `EXISTS`.
struct Source {
    table: &'static str,
    cond: String,
    rank: u8,
    seekable: bool,
}

impl Source {
    /// The clause as a condition on the candidate key `{r}.rid`.
    fn probe(&self, r: &str) -> String {
        if self.seekable {
            format!(
                "EXISTS (SELECT 1 FROM {} s WHERE {} AND s.rid = {r}.rid)",
                self.table, self.cond
            )
        } else {
            format!(
                "{r}.rid IN (SELECT s.rid FROM {} s WHERE {})",
                self.table, self.cond
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn source(
    q: &mut Q,
    tenant: &str,
    tcode: &str,
    code: &str,
    kind: K,
    modifier: &Modifier,
    values: &[Value],
) -> Result<Source, DbError> {
    let table = family_table(kind, modifier);
    let pk = q.bind(P::I(param_key(&param_name(code, modifier))));
    let mut ors = vec![];
    for v in values {
        ors.push(value_cond(q, kind, modifier, v)?);
    }
    let single = values.len() == 1;
    let (rank, seekable) = match (table, values.first()) {
        ("sp_reference", Some(Value::Reference { .. })) => (1, single),
        ("sp_reference", _) => (3, false),
        ("sp_token", Some(Value::Token { code: Some(_), .. } | Value::OfType { .. })) => {
            (2, single)
        }
        ("sp_token", _) => (6, false),
        ("sp_string", _) if *modifier == Modifier::Exact => (2, single),
        ("sp_string", _) if *modifier == Modifier::Contains => (7, false),
        ("sp_string", _) => (3, false),
        ("sp_uri", _) if matches!(modifier, Modifier::None) => (2, single),
        ("sp_uri", _) => (5, false),
        ("sp_quantity", Some(Value::Quantity { code: Some(_), .. })) => (4, single),
        ("sp_quantity", _) => (5, false),
        // date and number rows are keyed (param, rid, lo, hi): a per-resource check is a seek
        ("sp_date" | "sp_number", _) => (6, true),
        _ => (5, false),
    };
    Ok(Source {
        table,
        cond: format!(
            "s.tenant = {tenant} AND s.type = {tcode} AND s.param = {pk} AND ({})",
            ors.join(" OR ")
        ),
        rank,
        seekable,
    })
}

/// A chained parameter (`subject:Patient.gender=female`): the references of parameter
/// `ref_code` whose target matches `inner`. As a key set (`{r}.rid IN …`: all resources whose
/// reference matches, good when the chain is what restricts the search), or as a per-candidate
/// check (`probe`: the candidate's own references are found through `sp_reference_rid`, so the
/// cost follows the number of candidates, not the number of resources the chain matches).
#[allow(clippy::too_many_arguments)]
fn chain_sql(
    q: &mut Q,
    tenant: &str,
    r: &str,
    tcode: &str,
    ref_code: &str,
    target_types: &[String],
    inner: &Clause,
    depth: usize,
    probe: bool,
) -> Result<String, DbError> {
    let pk = q.bind(P::I(param_key(ref_code)));
    let alias = format!("c{depth}");
    let mut ors = vec![];
    if probe {
        // per candidate: its reference (sp_reference_rid), the target by id, the target's
        // own condition checked the same way — seeks only
        for t in target_types {
            let tc = type_code(t).ok_or_else(|| unsupported(t))?;
            let tcb = q.bind(P::I(tc));
            let cond = match inner {
                c if is_positive(c) => positive_source(q, tenant, &tcb, c)?.probe(&alias),
                Clause::Chain {
                    ref_code,
                    target_types,
                    inner,
                } => chain_sql(
                    q,
                    tenant,
                    &alias,
                    &tcb,
                    ref_code,
                    target_types,
                    inner,
                    depth + 1,
                    true,
                )?,
                _ => clause_sql(q, tenant, &alias, &tcb, inner, depth + 1)?,
            };
            ors.push(format!(
                "EXISTS (SELECT 1 FROM sp_reference s{depth} JOIN resource {alias} ON {alias}.tenant = s{depth}.tenant \
                 AND {alias}.type = s{depth}.target_type AND {alias}.id = s{depth}.target_id AND {alias}.deleted = 0 \
                 WHERE s{depth}.tenant = {tenant} AND s{depth}.type = {tcode} AND s{depth}.param = {pk} \
                 AND s{depth}.rid = {r}.rid AND s{depth}.target_type = {tcb} AND {cond})"
            ));
        }
        return Ok(format!("({})", ors.join(" OR ")));
    }
    for t in target_types {
        let tc = type_code(t).ok_or_else(|| unsupported(t))?;
        let tcb = q.bind(P::I(tc));
        let cond = clause_sql(q, tenant, &alias, &tcb, inner, depth + 1)?;
        ors.push(format!(
            "(s{depth}.target_type = {tcb} AND s{depth}.target_id IN (SELECT {alias}.id FROM resource {alias} WHERE {alias}.tenant = {tenant} AND {alias}.type = {tcb} AND {alias}.deleted = 0 AND {cond}))"
        ));
    }
    Ok(format!(
        "{r}.rid IN (SELECT s{depth}.rid FROM sp_reference s{depth} WHERE s{depth}.tenant = {tenant} AND s{depth}.type = {tcode} AND s{depth}.param = {pk} AND ({}))",
        ors.join(" OR ")
    ))
}

/// A clause that one index range can answer by itself: a parameter (not `_id` or
/// `_lastUpdated`, which live in `resource`) without `:not`, `:missing` or composite values.
fn is_positive(c: &Clause) -> bool {
    match c {
        Clause::Param {
            code,
            kind,
            modifier,
            values,
            ..
        } => {
            code != "_id"
                && code != "_lastUpdated"
                && *kind != K::Composite
                && *modifier != Modifier::Not
                && !values.iter().any(|v| matches!(v, Value::Missing(_)))
        }
        _ => false,
    }
}

/// The [`Source`] of a clause for which [`is_positive`] holds.
fn positive_source(q: &mut Q, tenant: &str, tcode: &str, c: &Clause) -> Result<Source, DbError> {
    match c {
        Clause::Param {
            code,
            kind,
            modifier,
            values,
            ..
        } => source(q, tenant, tcode, code, *kind, modifier, values),
        _ => Err(unsupported("clause without an index range")),
    }
}

fn param_name(code: &str, m: &Modifier) -> String {
    match m {
        Modifier::Text => format!("{code}:text"),
        Modifier::Identifier => format!("{code}:identifier"),
        Modifier::OfType => format!("{code}:of-type"),
        _ => code.to_string(),
    }
}

fn family_table(kind: K, m: &Modifier) -> &'static str {
    match (kind, m) {
        (_, Modifier::Text) => "sp_string",
        (_, Modifier::Identifier) => "sp_token",
        (K::String, _) => "sp_string",
        (K::Token, _) => "sp_token",
        (K::Date, _) => "sp_date",
        (K::Number, _) => "sp_number",
        (K::Quantity, _) => "sp_quantity",
        (K::Reference, _) => "sp_reference",
        (K::Uri, _) => "sp_uri",
        _ => "sp_token",
    }
}

fn like_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// Range semantics of FHIR search prefixes: the target `[lo_col, hi_col]` against `[pl, ph]`.
fn range_cond(q: &mut Q, lo_col: &str, hi_col: &str, prefix: Prefix, pl: i64, ph: i64) -> String {
    // bind only the bounds a prefix uses (PostgreSQL refuses untyped unused parameters)
    match prefix {
        Prefix::Eq => {
            let (a, b) = (q.bind(P::I(pl)), q.bind(P::I(ph)));
            format!("({lo_col} >= {a} AND {hi_col} <= {b})")
        }
        Prefix::Ne => {
            let (a, b) = (q.bind(P::I(pl)), q.bind(P::I(ph)));
            format!("({lo_col} < {a} OR {hi_col} > {b})")
        }
        Prefix::Gt => {
            let b = q.bind(P::I(ph));
            format!("({hi_col} > {b})")
        }
        Prefix::Lt => {
            let a = q.bind(P::I(pl));
            format!("({lo_col} < {a})")
        }
        Prefix::Ge => {
            let (a, b) = (q.bind(P::I(pl)), q.bind(P::I(ph)));
            format!("({hi_col} > {b} OR ({lo_col} >= {a} AND {hi_col} <= {b}))")
        }
        Prefix::Le => {
            let (a, b) = (q.bind(P::I(pl)), q.bind(P::I(ph)));
            format!("({lo_col} < {a} OR ({lo_col} >= {a} AND {hi_col} <= {b}))")
        }
        Prefix::Sa => {
            let b = q.bind(P::I(ph));
            format!("({lo_col} > {b})")
        }
        Prefix::Eb => {
            let a = q.bind(P::I(pl));
            format!("({hi_col} < {a})")
        }
        Prefix::Ap => {
            let now = crate::now_ms();
            let dist = ((pl - now).abs() / 10).max(86_400_000);
            let a2 = q.bind(P::I(pl.saturating_sub(dist).max(MIN_MS)));
            let b2 = q.bind(P::I(ph.saturating_add(dist).min(MAX_MS)));
            format!("({lo_col} <= {b2} AND {hi_col} >= {a2})")
        }
    }
}

fn number_cond(q: &mut Q, prefix: Prefix, value: f64, lo: f64, hi: f64) -> String {
    // Stored numbers are points (lo = hi) or ranges (Range); compare like dates, with the
    // search value's precision range for eq/ne/ap and the exact value for gt/lt/ge/le.
    match prefix {
        Prefix::Eq => {
            let (a, b) = (q.bind(P::F(lo)), q.bind(P::F(hi)));
            format!("(s.lo >= {a} AND s.hi < {b})")
        }
        Prefix::Ne => {
            let (a, b) = (q.bind(P::F(lo)), q.bind(P::F(hi)));
            format!("(s.lo < {a} OR s.hi >= {b})")
        }
        Prefix::Gt | Prefix::Sa => {
            let v = q.bind(P::F(value));
            format!("(s.hi > {v})")
        }
        Prefix::Lt | Prefix::Eb => {
            let v = q.bind(P::F(value));
            format!("(s.lo < {v})")
        }
        Prefix::Ge => {
            let v = q.bind(P::F(value));
            format!("(s.hi >= {v})")
        }
        Prefix::Le => {
            let v = q.bind(P::F(value));
            format!("(s.lo <= {v})")
        }
        Prefix::Ap => {
            let d = (value * 0.1).abs();
            let (a, b) = (q.bind(P::F(value - d)), q.bind(P::F(value + d)));
            format!("(s.lo <= {b} AND s.hi >= {a})")
        }
    }
}

fn value_cond(q: &mut Q, kind: K, m: &Modifier, v: &Value) -> Result<String, DbError> {
    Ok(match v {
        Value::String(s) => {
            let norm = normalize_string(s);
            match m {
                Modifier::Exact => {
                    // `exact` is stored empty when it equals `norm`
                    let (a, b) = (q.bind(P::T(norm)), q.bind(P::T(s.clone())));
                    format!("(s.norm = {a} AND (s.exact = {b} OR (s.exact = '' AND s.norm = {b})))")
                }
                Modifier::Contains => {
                    let a = q.bind(P::T(format!("%{}%", like_escape(&norm))));
                    format!("(s.norm LIKE {a} ESCAPE '\\')")
                }
                _ => {
                    let ub = prefix_upper_bound(&norm);
                    let (a, b) = (q.bind(P::T(norm)), q.bind(P::T(ub)));
                    format!("(s.norm >= {a} AND s.norm < {b})")
                }
            }
        }
        Value::Token { system, code } => {
            let mut parts = vec![];
            if let Some(c) = code {
                let b = q.bind(P::T(c.clone()));
                parts.push(format!("s.code = {b}"));
            }
            if let Some(sys) = system {
                let b = q.bind(P::T(sys.clone()));
                parts.push(format!("s.system = {b}"));
            }
            if parts.is_empty() {
                "1 = 1".into()
            } else {
                format!("({})", parts.join(" AND "))
            }
        }
        Value::OfType {
            system,
            code,
            value,
        } => {
            let (a, b) = (
                q.bind(P::T(format!("{code}|{value}"))),
                q.bind(P::T(system.clone())),
            );
            format!("(s.code = {a} AND s.system = {b})")
        }
        Value::Reference { ty, id } => {
            let b = q.bind(P::T(id.clone()));
            match ty {
                Some(t) => {
                    let tc = type_code(t).ok_or_else(|| unsupported(t))?;
                    let a = q.bind(P::I(tc));
                    format!("(s.target_type = {a} AND s.target_id = {b})")
                }
                None => format!("(s.target_id = {b} AND s.target_type <> 0)"),
            }
        }
        Value::Url(u) => {
            let b = q.bind(P::T(u.clone()));
            format!("(s.target_type = 0 AND s.target_id = {b})")
        }
        Value::Date { prefix, range } => range_cond(q, "s.lo", "s.hi", *prefix, range.lo, range.hi),
        Value::Number {
            prefix,
            lo,
            hi,
            value,
        } => number_cond(q, *prefix, *value, *lo, *hi),
        Value::Quantity {
            prefix,
            lo,
            hi,
            value,
            system,
            code,
        } => {
            let mut c = number_cond(q, *prefix, *value, *lo, *hi);
            if let Some(cd) = code {
                let b = q.bind(P::T(cd.clone()));
                c = format!("({c} AND s.code = {b})");
            }
            if let Some(sys) = system {
                let b = q.bind(P::T(sys.clone()));
                c = format!("({c} AND s.system = {b})");
            }
            c
        }
        Value::Uri(u) => match m {
            Modifier::Below => {
                let a = q.bind(P::T(format!("{}%", like_escape(u))));
                format!("(s.value LIKE {a} ESCAPE '\\')")
            }
            Modifier::Above => {
                let a = q.bind(P::T(u.clone()));
                format!("({a} LIKE (s.value || '%'))")
            }
            Modifier::Contains => {
                let a = q.bind(P::T(format!("%{}%", like_escape(u))));
                format!("(s.value LIKE {a} ESCAPE '\\')")
            }
            _ => {
                let a = q.bind(P::T(u.clone()));
                format!("(s.value = {a})")
            }
        },
        Value::Missing(_) | Value::Composite(_) => {
            return Err(unsupported(&format!("{kind:?} value")))
        }
    })
}

fn sort_sql(q: &mut Q, key: &iryo_search::query::SortKey) -> String {
    let dir = if key.descending { "DESC" } else { "ASC" };
    let expr = match key.code.as_str() {
        "_id" => "r.id".to_string(),
        "_lastUpdated" => "r.last_updated".to_string(),
        code => {
            let pk = q.bind(P::I(param_key(code)));
            let (table, col) = match key.kind {
                K::String => (
                    "sp_string",
                    if key.descending {
                        "MAX(s.norm)"
                    } else {
                        "MIN(s.norm)"
                    },
                ),
                K::Date => (
                    "sp_date",
                    if key.descending {
                        "MAX(s.hi)"
                    } else {
                        "MIN(s.lo)"
                    },
                ),
                K::Number => (
                    "sp_number",
                    if key.descending {
                        "MAX(s.hi)"
                    } else {
                        "MIN(s.lo)"
                    },
                ),
                K::Quantity => (
                    "sp_quantity",
                    if key.descending {
                        "MAX(s.hi)"
                    } else {
                        "MIN(s.lo)"
                    },
                ),
                K::Reference => (
                    "sp_reference",
                    if key.descending {
                        "MAX(s.target_id)"
                    } else {
                        "MIN(s.target_id)"
                    },
                ),
                K::Uri => (
                    "sp_uri",
                    if key.descending {
                        "MAX(s.value)"
                    } else {
                        "MIN(s.value)"
                    },
                ),
                _ => (
                    "sp_token",
                    if key.descending {
                        "MAX(s.code)"
                    } else {
                        "MIN(s.code)"
                    },
                ),
            };
            format!("(SELECT {col} FROM {table} s WHERE s.tenant = r.tenant AND s.type = r.type AND s.param = {pk} AND s.rid = r.rid)")
        }
    };
    // missing values sort last in both directions, on both engines
    format!("(CASE WHEN {expr} IS NULL THEN 1 ELSE 0 END), {expr} {dir}")
}

/// The condition that limits a search to resources in a compartment (`Patient/123/Observation`):
/// resources of the searched type that reference the owner through any of the compartment's
/// parameters, as a source on `sp_reference`.
fn compartment_source(
    q: &mut Q,
    t: &str,
    tcode: &str,
    query: &SearchQuery,
    (cty, cid): &(String, String),
) -> Result<Source, DbError> {
    let ty = query.resource_type.as_deref().unwrap_or("");
    let params = iryo_search::model()
        .compartment_params(cty, ty)
        .unwrap_or(&[]);
    if params.is_empty() {
        return Err(unsupported(&format!(
            "{ty} is not in the {cty} compartment"
        )));
    }
    let ctc = type_code(cty).ok_or_else(|| unsupported(cty))?;
    let (a, b) = (q.bind(P::I(ctc)), q.bind(P::T(cid.clone())));
    let mut ors = vec![];
    for p in params {
        if p == "{def}" {
            continue;
        }
        let pk = q.bind(P::I(param_key(p)));
        ors.push(format!("s.param = {pk}"));
    }
    Ok(Source {
        table: "sp_reference",
        cond: format!(
            "s.tenant = {t} AND s.type = {tcode} AND s.target_type = {a} AND s.target_id = {b} AND ({})",
            if ors.is_empty() { "1 = 0".to_string() } else { ors.join(" OR ") }
        ),
        rank: 1,
        seekable: false,
    })
}

/// A compiled search: the SELECT of matching keys in result order (without LIMIT), and the
/// same set for counting.
struct Plan {
    q: Q,
    /// `SELECT … ORDER BY …`
    select: String,
    /// `SELECT COUNT(*) …`, which uses the first `count_params` parameters only (sort
    /// expressions bind theirs last; PostgreSQL refuses parameters a statement does not use).
    count: String,
    count_params: usize,
    /// Counting is one index range scan (a single clause driving, nothing else to check), so
    /// the total is given even when not asked for.
    cheap_count: bool,
}

/// Compile a search. Index-driven when it can be: the most selective clause's index range
/// yields candidate keys in key order, every other clause is checked per candidate (a seek
/// where the index allows it), and the `resource` table is not touched — index rows exist only
/// for live versions, so no `deleted` check is needed. Otherwise (sorting, `_id`,
/// `_lastUpdated`, `_has`, system-wide searches, no positive clause) the search is driven from
/// `resource`, each clause a key set. `bound` limits the keys to those that existed when the
/// first page was produced, so later pages are stable while others create resources.
fn plan(
    tenant: i64,
    query: &SearchQuery,
    compartment: Option<&(String, String)>,
    bound: i64,
) -> Result<Plan, DbError> {
    if let Some(p) = plan_indexed(tenant, query, compartment, bound)? {
        return Ok(p);
    }
    let mut q = Q { p: vec![] };
    let t = q.bind(P::I(tenant));
    let mut wh = vec![format!("r.tenant = {t}"), "r.deleted = 0".to_string()];
    let tcode = match &query.resource_type {
        Some(ty) => {
            let tc = type_code(ty).ok_or_else(|| unsupported(ty))?;
            let b = q.bind(P::I(tc));
            wh.push(format!("r.type = {b}"));
            b
        }
        None => {
            if !query.types.is_empty() {
                let mut codes = vec![];
                for ty in &query.types {
                    let tc = type_code(ty).ok_or_else(|| unsupported(ty))?;
                    codes.push(q.bind(P::I(tc)));
                }
                wh.push(format!("r.type IN ({})", codes.join(", ")));
            }
            "r.type".to_string()
        }
    };
    if let Some(comp) = compartment {
        let src = compartment_source(&mut q, &t, &tcode, query, comp)?;
        wh.push(src.probe("r"));
    }
    for c in &query.clauses {
        let cond = clause_sql(&mut q, &t, "r", &tcode, c, 0)?;
        wh.push(cond);
    }
    let b = q.bind(P::I(bound));
    wh.push(format!("r.rid <= {b}"));
    let count_params = q.p.len();
    let mut order = vec![];
    for k in &query.sort {
        order.push(sort_sql(&mut q, k));
    }
    order.push("r.rid ASC".to_string());
    let from = format!("FROM resource r WHERE {}", wh.join(" AND "));
    Ok(Plan {
        select: format!("SELECT r.rid {from} ORDER BY {}", order.join(", ")),
        count: format!("SELECT COUNT(*) {from}"),
        count_params,
        cheap_count: false,
        q,
    })
}

fn plan_indexed(
    tenant: i64,
    query: &SearchQuery,
    compartment: Option<&(String, String)>,
    bound: i64,
) -> Result<Option<Plan>, DbError> {
    let Some(ty) = &query.resource_type else {
        return Ok(None);
    };
    if !query.sort.is_empty() {
        return Ok(None);
    }
    let resource_free = |c: &Clause| match c {
        Clause::Param { code, .. } => code != "_id" && code != "_lastUpdated",
        Clause::Chain { .. } => true,
        Clause::Has { .. } => false,
    };
    if !query.clauses.iter().all(resource_free)
        || (compartment.is_none() && !query.clauses.iter().any(is_positive))
    {
        return Ok(None);
    }
    let tc = type_code(ty).ok_or_else(|| unsupported(ty))?;
    let mut q = Q { p: vec![] };
    let t = q.bind(P::I(tenant));
    let tcode = q.bind(P::I(tc));
    // every positive clause's source (all of them are used: one drives, the others probe)
    let mut sources: Vec<(Option<usize>, Source)> = vec![];
    if let Some(comp) = compartment {
        sources.push((None, compartment_source(&mut q, &t, &tcode, query, comp)?));
    }
    for (i, c) in query.clauses.iter().enumerate() {
        if is_positive(c) {
            sources.push((Some(i), positive_source(&mut q, &t, &tcode, c)?));
        }
    }
    let driver = sources
        .iter()
        .enumerate()
        .min_by_key(|(_, (_, s))| s.rank)
        .map(|(i, _)| i)
        .unwrap_or(0);
    let (_, drv) = sources.remove(driver);
    let mut wh = vec![];
    for (_, s) in &sources {
        wh.push(s.probe("d"));
    }
    for (i, c) in query.clauses.iter().enumerate() {
        if sources.iter().any(|(j, _)| *j == Some(i)) || is_positive(c) {
            continue;
        }
        wh.push(match c {
            Clause::Chain {
                ref_code,
                target_types,
                inner,
            } => chain_sql(
                &mut q,
                &t,
                "d",
                &tcode,
                ref_code,
                target_types,
                inner,
                0,
                true,
            )?,
            _ => clause_sql(&mut q, &t, "d", &tcode, c, 0)?,
        });
    }
    let cheap_count = wh.is_empty();
    let b = q.bind(P::I(bound));
    wh.push(format!("d.rid <= {b}"));
    let distinct = format!(
        "SELECT DISTINCT d.rid FROM (SELECT s.rid FROM {} s WHERE {}) d WHERE {}",
        drv.table,
        drv.cond,
        wh.join(" AND ")
    );
    Ok(Some(Plan {
        select: format!("{distinct} ORDER BY d.rid"),
        count: format!("SELECT COUNT(*) FROM ({distinct}) x"),
        count_params: q.p.len(),
        cheap_count,
        q,
    }))
}

/// Run a search inside a read transaction.
pub(crate) fn run(
    c: &mut dyn Sql,
    ctx: &Inner2,
    tenant: i64,
    req: &SearchRequest,
) -> Result<SearchPage, DbError> {
    run_in(c, ctx, tenant, req, None)
}

/// The state a page link carries (`_page`): the largest key that existed when the first page
/// was made, and the total then. Stateless, so any server sharing the database can serve the
/// next page.
fn parse_token(tok: &str) -> Option<(i64, Option<i64>)> {
    let (b, t) = tok.split_once('.')?;
    let bound = i64::from_str_radix(b, 16).ok()?;
    let total = if t.is_empty() {
        None
    } else {
        Some(t.parse().ok()?)
    };
    Some((bound, total))
}

fn make_token(bound: i64, total: Option<i64>) -> String {
    match total {
        Some(t) => format!("{bound:x}.{t}"),
        None => format!("{bound:x}."),
    }
}

/// A search within a compartment (`Patient/123/Observation?…`).
pub(crate) fn run_in(
    c: &mut dyn Sql,
    ctx: &Inner2,
    tenant: i64,
    req: &SearchRequest,
    compartment: Option<&(String, String)>,
) -> Result<SearchPage, DbError> {
    let query = &req.query;
    let count = query.count.unwrap_or(DEFAULT_COUNT).min(MAX_COUNT);
    let offset = query.offset;
    let (bound, known_total) = match &req.page_token {
        Some(tok) => parse_token(tok).ok_or_else(|| {
            DbError::Invalid(format!(
                "_page={tok} はこのサーバーのページ指定ではありません (malformed page token)"
            ))
        })?,
        None => {
            let max = c
                .query_one(
                    "SELECT MAX(rid) FROM resource WHERE tenant = $1",
                    &[P::I(tenant)],
                )?
                .map(|r| r[0].i())
                .unwrap_or(0);
            (max, None)
        }
    };
    let mut pl = plan(tenant, query, compartment, bound)?;
    if query.summary == Some(Summary::Count) {
        let n = c
            .query_one(&pl.count, &pl.q.p[..pl.count_params])?
            .map(|r| r[0].i())
            .unwrap_or(0);
        return Ok(SearchPage {
            total: Some(n),
            count: 0,
            offset,
            ..Default::default()
        });
    }
    let n_params = pl.q.p.len();
    let lim = pl.q.bind(P::I(count as i64 + 1));
    let off = pl.q.bind(P::I(offset as i64));
    let sql = format!("{} LIMIT {lim} OFFSET {off}", pl.select);
    let mut rids: Vec<i64> = c
        .query(&sql, &pl.q.p)?
        .into_iter()
        .map(|r| r[0].i())
        .collect();
    pl.q.p.truncate(n_params);
    let has_next = rids.len() > count;
    rids.truncate(count);
    let total = if query.total == Some(Total::None) {
        None
    } else if let Some(t) = known_total {
        Some(t)
    } else if !has_next && (offset == 0 || !rids.is_empty()) {
        Some((offset + rids.len()) as i64)
    } else if query.total.is_some() || pl.cheap_count {
        c.query_one(&pl.count, &pl.q.p[..pl.count_params])?
            .map(|r| r[0].i())
    } else {
        // Without `_total`, a count that would visit every match (several clauses, chains,
        // sorting) is left out: its cost grows with the data while the page's does not.
        // `_total=accurate` asks for it.
        None
    };
    let matches = read_rids(c, ctx, tenant, &rids)?;
    let token = (has_next || offset > 0).then(|| make_token(bound, total));
    let includes = includes(c, ctx, tenant, query, &matches)?;
    Ok(SearchPage {
        matches,
        includes,
        total,
        offset,
        count,
        token,
        has_next,
    })
}

/// Resolve `_include` and `_revinclude` (with `:iterate`) for a page of matches.
fn includes(
    c: &mut dyn Sql,
    ctx: &Inner2,
    tenant: i64,
    query: &SearchQuery,
    matches: &[StoredResource],
) -> Result<Vec<StoredResource>, DbError> {
    if query.includes.is_empty() && query.revincludes.is_empty() {
        return Ok(vec![]);
    }
    let mut seen: HashSet<(String, String)> = matches
        .iter()
        .map(|m| (m.ty.clone(), m.id.clone()))
        .collect();
    let mut out: Vec<StoredResource> = vec![];
    let mut frontier: Vec<StoredResource> = matches.to_vec();
    for round in 0..4 {
        let mut next: Vec<StoredResource> = vec![];
        let incs = |i: &&Include| round == 0 || i.iterate;
        // forward: references out of the frontier resources
        let mut keys: Vec<(String, String)> = vec![];
        for inc in query.includes.iter().filter(incs) {
            for m in frontier.iter().filter(|m| m.ty == inc.source_type) {
                let Some(json) = &m.json else { continue };
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
                    continue;
                };
                let entries = if inc.param == "*" {
                    ctx.extractor.extract(&v)
                } else {
                    ctx.extractor.extract_param(&v, &inc.param)
                };
                for e in entries {
                    if let IndexValue::Reference { ty, id } = e.value {
                        if ty.is_empty() || inc.target_type.as_deref().is_some_and(|t| t != ty) {
                            continue;
                        }
                        if seen.insert((ty.clone(), id.clone())) {
                            keys.push((ty, id));
                        }
                    }
                }
            }
        }
        for (ty, id) in keys.into_iter().take(MAX_INCLUDES) {
            if let Some(r) = crate::store::read_current(c, ctx, tenant, &ty, &id)? {
                if !r.deleted {
                    next.push(r);
                }
            }
        }
        // reverse: resources pointing at the frontier, one query per (include, target type)
        for inc in query.revincludes.iter().filter(incs) {
            let src = type_code(&inc.source_type).ok_or_else(|| unsupported(&inc.source_type))?;
            let mut by_type: HashMap<i64, Vec<String>> = HashMap::new();
            for m in &frontier {
                if inc.target_type.as_deref().is_some_and(|t| t != m.ty) {
                    continue;
                }
                if let Some(tc) = type_code(&m.ty) {
                    by_type.entry(tc).or_default().push(m.id.clone());
                }
            }
            for (tc, ids) in by_type {
                for chunk in ids.chunks(200) {
                    let mut p = vec![P::I(tenant), P::I(src), P::I(tc)];
                    // index rows exist only for live versions: no join with `resource`
                    let mut sql = "SELECT DISTINCT s.rid FROM sp_reference s \
                         WHERE s.tenant = $1 AND s.type = $2 AND s.target_type = $3"
                        .to_string();
                    if inc.param != "*" {
                        p.push(P::I(param_key(&inc.param)));
                        sql.push_str(&format!(" AND s.param = ${}", p.len()));
                    }
                    let mut marks = Vec::with_capacity(chunk.len());
                    for id in chunk {
                        p.push(P::T(id.clone()));
                        marks.push(format!("${}", p.len()));
                    }
                    sql.push_str(&format!(
                        " AND s.target_id IN ({}) LIMIT {MAX_INCLUDES}",
                        marks.join(", ")
                    ));
                    let rids: Vec<i64> = c.query(&sql, &p)?.into_iter().map(|r| r[0].i()).collect();
                    for r in read_rids(c, ctx, tenant, &rids)? {
                        if seen.insert((r.ty.clone(), r.id.clone())) {
                            next.push(r);
                        }
                    }
                }
            }
        }
        if next.is_empty() || out.len() > MAX_INCLUDES {
            break;
        }
        out.extend(next.iter().cloned());
        frontier = next;
    }
    Ok(out)
}

/// Compartment search entry point used by the store.
impl crate::Store {
    pub async fn search_compartment(
        &self,
        tenant: i64,
        compartment: (String, String),
        req: SearchRequest,
    ) -> Result<SearchPage, DbError> {
        self.read_with(move |c, ctx| run_in(c, ctx, tenant, &req, Some(&compartment)))
            .await
    }

    /// The (type, id) of every live resource of a type (or all types), for `$export`.
    pub async fn scan(
        &self,
        tenant: i64,
        ty: Option<String>,
        since: Option<i64>,
        after_rid: i64,
        limit: usize,
    ) -> Result<Vec<(i64, StoredResource)>, DbError> {
        self.read_with(move |c, ctx| {
            let mut p = vec![P::I(tenant), P::I(after_rid)];
            let mut sql =
                "SELECT r.rid FROM resource r WHERE r.tenant = $1 AND r.rid > $2 AND r.deleted = 0"
                    .to_string();
            if let Some(ty) = &ty {
                p.push(P::I(type_code(ty).ok_or_else(|| unsupported(ty))?));
                sql.push_str(&format!(" AND r.type = ${}", p.len()));
            }
            if let Some(s) = since {
                p.push(P::I(s));
                sql.push_str(&format!(" AND r.last_updated >= ${}", p.len()));
            }
            sql.push_str(&format!(" ORDER BY r.rid LIMIT {limit}"));
            let rids: Vec<i64> = c.query(&sql, &p)?.into_iter().map(|r| r[0].i()).collect();
            let res = read_rids(c, ctx, tenant, &rids)?;
            Ok(rids.into_iter().zip(res).collect())
        })
        .await
    }
}
