//! Recursive-descent / precedence-climbing parser producing the expression tree.

use crate::error::ParseError;
use crate::lexer::{tokenize, Tok, Token};
use crate::temporal::{PartialDateTime, PartialTime};
use crate::value::Quantity;
use rust_decimal::Decimal;
use std::str::FromStr;

#[derive(Debug, Clone)]
pub(crate) enum Lit {
    Bool(bool),
    Str(String),
    Int(i64),
    Dec(Decimal),
    Date(PartialDateTime),
    DateTime(PartialDateTime),
    Time(PartialTime),
    Qty(Quantity),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    NotEq,
    Equiv,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeFn {
    Is,
    As,
    OfType,
}

/// A type specifier such as `Quantity`, `FHIR.Patient` or `System.Integer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeSpec {
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone)]
pub(crate) enum Ast {
    Empty,
    Lit(Lit),
    This,
    Index,
    Total,
    Env(String),
    /// Member navigation; `None` target means the current focus.
    Member(Option<Box<Ast>>, String),
    /// Function call; `None` target means the current focus.
    Call(Option<Box<Ast>>, crate::functions::Func, Vec<Ast>),
    TypeOp(Option<Box<Ast>>, TypeFn, TypeSpec),
    Indexer(Box<Ast>, Box<Ast>),
    Neg(Box<Ast>),
    Bin(BinOp, Box<Ast>, Box<Ast>),
}

const CALENDAR_UNITS: &[&str] = &[
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "second",
    "seconds",
    "millisecond",
    "milliseconds",
];

pub(crate) fn parse_ast(src: &str) -> Result<Ast, ParseError> {
    let toks = tokenize(src)?;
    let mut p = Parser {
        toks,
        i: 0,
        depth: 0,
        nodes: 0,
    };
    let ast = p.expr(0)?;
    if p.peek() != &Tok::Eof {
        return Err(ParseError::new(
            p.pos(),
            "式の後に余分な字句があります",
            "unexpected token after end of expression",
        ));
    }
    Ok(ast)
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
    depth: usize,
    nodes: usize,
}

/// Limits that keep evaluation (which recurses over the tree) and dropping the
/// tree well within the stack: nesting depth and the total number of nodes.
const MAX_DEPTH: usize = 100;
const MAX_NODES: usize = 1000;

fn keyword_op(name: &str) -> Option<(BinOp, u8)> {
    Some(match name {
        "implies" => (BinOp::Implies, 1),
        "or" => (BinOp::Or, 2),
        "xor" => (BinOp::Xor, 2),
        "and" => (BinOp::And, 3),
        "in" => (BinOp::In, 4),
        "contains" => (BinOp::Contains, 4),
        "div" => (BinOp::IntDiv, 10),
        "mod" => (BinOp::Mod, 10),
        _ => return None,
    })
}

const TYPE_OP_BP: u8 = 8;

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.i].tok
    }
    fn peek_at(&self, n: usize) -> &Tok {
        let j = (self.i + n).min(self.toks.len() - 1);
        &self.toks[j].tok
    }
    fn pos(&self) -> usize {
        self.toks[self.i].pos
    }
    fn bump(&mut self) -> Tok {
        let t = self.toks[self.i].tok.clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }
    fn expect(&mut self, t: Tok, what: &str) -> Result<(), ParseError> {
        if *self.peek() == t {
            self.bump();
            Ok(())
        } else {
            Err(ParseError::new(
                self.pos(),
                format!("'{what}' が必要です"),
                format!("expected '{what}'"),
            ))
        }
    }

    /// Returns the binary operator at the cursor with its binding power.
    fn infix(&self) -> Option<(BinOp, u8)> {
        Some(match self.peek() {
            Tok::Star => (BinOp::Mul, 10),
            Tok::Slash => (BinOp::Div, 10),
            Tok::Plus => (BinOp::Add, 9),
            Tok::Minus => (BinOp::Sub, 9),
            Tok::Amp => (BinOp::Concat, 9),
            Tok::Pipe => (BinOp::Union, 7),
            Tok::Lt => (BinOp::Lt, 6),
            Tok::Le => (BinOp::Le, 6),
            Tok::Gt => (BinOp::Gt, 6),
            Tok::Ge => (BinOp::Ge, 6),
            Tok::Eq => (BinOp::Eq, 5),
            Tok::NotEq => (BinOp::NotEq, 5),
            Tok::Equiv => (BinOp::Equiv, 5),
            Tok::NotEquiv => (BinOp::NotEquiv, 5),
            Tok::Ident {
                name,
                quoted: false,
            } => return keyword_op(name),
            _ => return None,
        })
    }

    /// Counts one more tree node, failing beyond [`MAX_NODES`].
    fn node(&mut self) -> Result<(), ParseError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(ParseError::new(
                self.pos(),
                "式が長すぎます",
                "expression too long",
            ));
        }
        Ok(())
    }

    fn expr(&mut self, min_bp: u8) -> Result<Ast, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::new(
                self.pos(),
                "式の入れ子が深すぎます",
                "expression nested too deeply",
            ));
        }
        let mut lhs = self.unary()?;
        loop {
            if let Tok::Ident {
                name,
                quoted: false,
            } = self.peek()
            {
                if (name == "is" || name == "as") && TYPE_OP_BP > min_bp {
                    let f = if name == "is" { TypeFn::Is } else { TypeFn::As };
                    self.node()?;
                    self.bump();
                    let spec = self.type_spec()?;
                    lhs = Ast::TypeOp(Some(Box::new(lhs)), f, spec);
                    continue;
                }
            }
            let Some((op, bp)) = self.infix() else { break };
            if bp <= min_bp {
                break;
            }
            self.bump();
            self.node()?;
            let rhs = self.expr(bp)?;
            lhs = Ast::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn type_spec(&mut self) -> Result<TypeSpec, ParseError> {
        let first = match self.bump() {
            Tok::Ident { name, .. } => name,
            _ => {
                return Err(ParseError::new(
                    self.pos(),
                    "型名が必要です",
                    "expected a type name",
                ))
            }
        };
        if *self.peek() == Tok::Dot {
            if let Tok::Ident { name, .. } = self.peek_at(1).clone() {
                self.bump();
                self.bump();
                return Ok(TypeSpec {
                    namespace: Some(first),
                    name,
                });
            }
        }
        Ok(TypeSpec {
            namespace: None,
            name: first,
        })
    }

    fn unary(&mut self) -> Result<Ast, ParseError> {
        match self.peek() {
            Tok::Minus => {
                self.bump();
                self.node()?;
                let inner = self.unary()?;
                Ok(match inner {
                    Ast::Lit(Lit::Int(n)) => Ast::Lit(Lit::Int(-n)),
                    Ast::Lit(Lit::Dec(d)) => Ast::Lit(Lit::Dec(-d)),
                    Ast::Lit(Lit::Qty(mut q)) => {
                        q.value = -q.value;
                        Ast::Lit(Lit::Qty(q))
                    }
                    other => Ast::Neg(Box::new(other)),
                })
            }
            Tok::Plus => {
                self.bump();
                self.node()?;
                self.unary()
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Ast, ParseError> {
        let mut t = self.term()?;
        loop {
            if matches!(self.peek(), Tok::Dot | Tok::LBracket) {
                self.node()?;
            }
            match self.peek() {
                Tok::Dot => {
                    self.bump();
                    let pos = self.pos();
                    let name = match self.bump() {
                        Tok::Ident { name, .. } => name,
                        _ => {
                            return Err(ParseError::new(
                                pos,
                                "'.' の後に名前が必要です",
                                "expected a name after '.'",
                            ))
                        }
                    };
                    if *self.peek() == Tok::LParen {
                        t = self.call(Some(Box::new(t)), name, pos)?;
                    } else {
                        t = Ast::Member(Some(Box::new(t)), name);
                    }
                }
                Tok::LBracket => {
                    self.bump();
                    let idx = self.expr(0)?;
                    self.expect(Tok::RBracket, "]")?;
                    t = Ast::Indexer(Box::new(t), Box::new(idx));
                }
                _ => break,
            }
        }
        Ok(t)
    }

    fn call(
        &mut self,
        target: Option<Box<Ast>>,
        name: String,
        pos: usize,
    ) -> Result<Ast, ParseError> {
        self.expect(Tok::LParen, "(")?;
        let tf = match name.as_str() {
            "is" => Some(TypeFn::Is),
            "as" => Some(TypeFn::As),
            "ofType" => Some(TypeFn::OfType),
            _ => None,
        };
        if let Some(f) = tf {
            let spec = self.type_spec()?;
            self.expect(Tok::RParen, ")")?;
            return Ok(Ast::TypeOp(target, f, spec));
        }
        let mut args = Vec::new();
        if *self.peek() != Tok::RParen {
            loop {
                args.push(self.expr(0)?);
                if *self.peek() == Tok::Comma {
                    self.bump();
                    continue;
                }
                break;
            }
        }
        self.expect(Tok::RParen, ")")?;
        let f = crate::functions::lookup(&name, args.len())
            .map_err(|(ja, en)| ParseError::new(pos, ja, en))?;
        Ok(Ast::Call(target, f, args))
    }

    fn term(&mut self) -> Result<Ast, ParseError> {
        let pos = self.pos();
        match self.bump() {
            Tok::Number(text) => {
                // Quantity literal?
                let unit = match self.peek() {
                    Tok::Str(u) => Some(u.clone()),
                    Tok::Ident {
                        name,
                        quoted: false,
                    } if CALENDAR_UNITS.contains(&name.as_str()) => {
                        Some(crate::value::singular_calendar(name).to_string())
                    }
                    _ => None,
                };
                let value = Decimal::from_str(&text).map_err(|_| {
                    ParseError::new(pos, "数値が大きすぎます", "number out of range")
                })?;
                if let Some(unit) = unit {
                    self.bump();
                    return Ok(Ast::Lit(Lit::Qty(Quantity { value, unit })));
                }
                if text.contains('.') {
                    Ok(Ast::Lit(Lit::Dec(value)))
                } else {
                    let n = text.parse::<i64>().map_err(|_| {
                        ParseError::new(pos, "整数が大きすぎます", "integer out of range")
                    })?;
                    Ok(Ast::Lit(Lit::Int(n)))
                }
            }
            Tok::Str(s) => Ok(Ast::Lit(Lit::Str(s))),
            Tok::Temporal(text) => {
                if let Some(t) = text.strip_prefix('T') {
                    let v = PartialTime::parse(t).ok_or_else(|| {
                        ParseError::new(pos, "不正な時刻リテラル", "invalid time literal")
                    })?;
                    Ok(Ast::Lit(Lit::Time(v)))
                } else {
                    let (v, has_t) = PartialDateTime::parse_literal(&text).ok_or_else(|| {
                        ParseError::new(pos, "不正な日付リテラル", "invalid date/time literal")
                    })?;
                    Ok(Ast::Lit(if has_t {
                        Lit::DateTime(v)
                    } else {
                        Lit::Date(v)
                    }))
                }
            }
            Tok::LBrace => {
                self.expect(Tok::RBrace, "}")?;
                Ok(Ast::Empty)
            }
            Tok::LParen => {
                let e = self.expr(0)?;
                self.expect(Tok::RParen, ")")?;
                Ok(e)
            }
            Tok::EnvVar(name) => Ok(Ast::Env(name)),
            Tok::Special(name) => Ok(match name.as_str() {
                "this" => Ast::This,
                "index" => Ast::Index,
                _ => Ast::Total,
            }),
            Tok::Ident { name, quoted } => {
                if *self.peek() == Tok::LParen && !quoted {
                    return self.call(None, name, pos);
                }
                if !quoted {
                    match name.as_str() {
                        "true" => return Ok(Ast::Lit(Lit::Bool(true))),
                        "false" => return Ok(Ast::Lit(Lit::Bool(false))),
                        // Operator keywords in term position are plain identifiers (e.g. `repeat(contains)`).
                        _ => {}
                    }
                }
                Ok(Ast::Member(None, name))
            }
            Tok::Eof => Err(ParseError::new(
                pos,
                "式が途中で終わっています",
                "unexpected end of expression",
            )),
            _ => Err(ParseError::new(pos, "予期しない字句", "unexpected token")),
        }
    }
}
