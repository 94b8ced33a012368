//! A small UCUM unit algebra for the common units used in clinical data:
//! metric prefixes on g, m, L, s, mol, eq, U, IU, Pa, …; time (min, h, d, wk, mo, a);
//! customary [lb_av], [oz_av], [in_i], [ft_i]; %, mm[Hg]. Units are reduced to a
//! factor and a dimension vector so that e.g. `4 'g' = 4000 'mg'` and
//! `2 'cm' * 2 'm' = 0.04 'm2'`.

use rust_decimal::Decimal;
use std::str::FromStr;

/// Dimensions: length, mass, time, amount of substance, current, temperature, luminous intensity,
/// plus two arbitrary "unit" dimensions for enzyme units (U) and international units ([iU]).
pub(crate) type Dims = [i8; 9];

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Canon {
    pub factor: Decimal,
    pub dims: Dims,
}

const L: usize = 0;
const M: usize = 1;
const T: usize = 2;
const N: usize = 3;
const I: usize = 4;
const TH: usize = 5;
const J: usize = 6;
const EU: usize = 7;
const IU: usize = 8;

fn dim(i: usize, p: i8) -> Dims {
    let mut d = [0; 9];
    d[i] = p;
    d
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or(Decimal::ONE)
}

/// Base atoms: (code, factor, dims, allows metric prefix).
fn atom(code: &str) -> Option<(Decimal, Dims, bool)> {
    let none = [0i8; 9];
    Some(match code {
        "m" => (Decimal::ONE, dim(L, 1), true),
        "g" => (Decimal::ONE, dim(M, 1), true),
        "s" => (Decimal::ONE, dim(T, 1), true),
        "mol" => (Decimal::ONE, dim(N, 1), true),
        "A" => (Decimal::ONE, dim(I, 1), true),
        "K" => (Decimal::ONE, dim(TH, 1), true),
        "cd" => (Decimal::ONE, dim(J, 1), true),
        "L" | "l" => (dec("0.001"), dim(L, 3), true),
        "min" => (dec("60"), dim(T, 1), false),
        "h" => (dec("3600"), dim(T, 1), false),
        "d" => (dec("86400"), dim(T, 1), false),
        "wk" => (dec("604800"), dim(T, 1), false),
        "mo" => (dec("2629800"), dim(T, 1), false),
        "a" => (dec("31557600"), dim(T, 1), false),
        "Hz" => (Decimal::ONE, dim(T, -1), true),
        "N" => (dec("1000"), [1, 1, -2, 0, 0, 0, 0, 0, 0], true),
        "Pa" => (dec("1000"), [-1, 1, -2, 0, 0, 0, 0, 0, 0], true),
        "J" => (dec("1000"), [2, 1, -2, 0, 0, 0, 0, 0, 0], true),
        "W" => (dec("1000"), [2, 1, -3, 0, 0, 0, 0, 0, 0], true),
        "cal" => (dec("4184"), [2, 1, -2, 0, 0, 0, 0, 0, 0], true),
        "bar" => (dec("100000000"), [-1, 1, -2, 0, 0, 0, 0, 0, 0], true),
        "mm[Hg]" => (dec("133322.387415"), [-1, 1, -2, 0, 0, 0, 0, 0, 0], false),
        "eq" => (Decimal::ONE, dim(N, 1), true),
        "U" => (Decimal::ONE, dim(EU, 1), true),
        "[iU]" | "[IU]" => (Decimal::ONE, dim(IU, 1), true),
        "%" => (dec("0.01"), none, false),
        "[ppm]" => (dec("0.000001"), none, false),
        "[lb_av]" => (dec("453.59237"), dim(M, 1), false),
        "[oz_av]" => (dec("28.349523125"), dim(M, 1), false),
        "[in_i]" => (dec("0.0254"), dim(L, 1), false),
        "[ft_i]" => (dec("0.3048"), dim(L, 1), false),
        "[mi_i]" => (dec("1609.344"), dim(L, 1), false),
        "t" => (dec("1000000"), dim(M, 1), true),
        "10*3" => (dec("1000"), none, false),
        "10*6" => (dec("1000000"), none, false),
        "10*9" => (dec("1000000000"), none, false),
        "10*12" => (dec("1000000000000"), none, false),
        "1" => (Decimal::ONE, none, false),
        _ => return None,
    })
}

fn prefix(p: &str) -> Option<Decimal> {
    Some(dec(match p {
        "Y" => "1000000000000000000000000",
        "Z" => "1000000000000000000000",
        "E" => "1000000000000000000",
        "P" => "1000000000000000",
        "T" => "1000000000000",
        "G" => "1000000000",
        "M" => "1000000",
        "k" => "1000",
        "h" => "100",
        "da" => "10",
        "d" => "0.1",
        "c" => "0.01",
        "m" => "0.001",
        "u" => "0.000001",
        "n" => "0.000000001",
        "p" => "0.000000000001",
        "f" => "0.000000000000001",
        "a" => "0.000000000000000001",
        _ => return None,
    }))
}

/// Calendar keywords map to the UCUM definite durations they equal
/// (week and smaller; year/month are handled by the caller).
pub(crate) fn calendar_to_ucum(u: &str) -> Option<&'static str> {
    Some(match u {
        "week" => "wk",
        "day" => "d",
        "hour" => "h",
        "minute" => "min",
        "second" => "s",
        "millisecond" => "ms",
        "year" => "a",
        "month" => "mo",
        _ => return None,
    })
}

fn simple(code: &str) -> Option<Canon> {
    if let Some((f, d, _)) = atom(code) {
        return Some(Canon { factor: f, dims: d });
    }
    for plen in [1usize, 2] {
        if code.len() > plen && code.is_char_boundary(plen) {
            let (p, rest) = code.split_at(plen);
            if let (Some(pf), Some((f, d, true))) = (prefix(p), atom(rest)) {
                return Some(Canon {
                    factor: pf.checked_mul(f)?,
                    dims: d,
                });
            }
        }
    }
    None
}

fn pow(c: &Canon, e: i32) -> Option<Canon> {
    let mut f = Decimal::ONE;
    for _ in 0..e.unsigned_abs() {
        f = f.checked_mul(c.factor)?;
    }
    if e < 0 {
        f = Decimal::ONE.checked_div(f)?;
    }
    let mut dims = c.dims;
    for d in dims.iter_mut() {
        *d = d.checked_mul(i8::try_from(e).ok()?)?;
    }
    Some(Canon { factor: f, dims })
}

fn mul(a: &Canon, b: &Canon, div: bool) -> Option<Canon> {
    let factor = if div {
        a.factor.checked_div(b.factor)?
    } else {
        a.factor.checked_mul(b.factor)?
    };
    let mut dims = a.dims;
    for (i, d) in dims.iter_mut().enumerate() {
        *d = if div {
            d.checked_sub(b.dims[i])?
        } else {
            d.checked_add(b.dims[i])?
        };
    }
    Some(Canon { factor, dims })
}

/// Reduces a UCUM unit expression to a factor and dimensions; `None` when unknown.
pub(crate) fn canonical(unit: &str) -> Option<Canon> {
    let mut p = UnitParser {
        s: unit.as_bytes(),
        i: 0,
        src: unit,
        depth: 0,
    };
    let c = p.term()?;
    if p.i != p.s.len() {
        return None;
    }
    Some(c)
}

struct UnitParser<'s> {
    s: &'s [u8],
    i: usize,
    src: &'s str,
    depth: u32,
}

impl UnitParser<'_> {
    fn term(&mut self) -> Option<Canon> {
        self.depth += 1;
        if self.depth > 20 {
            return None;
        }
        let mut acc = if self.s.get(self.i) == Some(&b'/') {
            Canon {
                factor: Decimal::ONE,
                dims: [0; 9],
            }
        } else {
            self.component()?
        };
        while let Some(&c) = self.s.get(self.i) {
            match c {
                b'.' => {
                    self.i += 1;
                    let r = self.component()?;
                    acc = mul(&acc, &r, false)?;
                }
                b'/' => {
                    self.i += 1;
                    let r = self.component()?;
                    acc = mul(&acc, &r, true)?;
                }
                _ => break,
            }
        }
        self.depth -= 1;
        Some(acc)
    }

    fn component(&mut self) -> Option<Canon> {
        if self.s.get(self.i) == Some(&b'(') {
            self.i += 1;
            let c = self.term()?;
            if self.s.get(self.i) != Some(&b')') {
                return None;
            }
            self.i += 1;
            return Some(c);
        }
        // annotation alone counts as 1
        if self.s.get(self.i) == Some(&b'{') {
            self.skip_annotation()?;
            return Some(Canon {
                factor: Decimal::ONE,
                dims: [0; 9],
            });
        }
        let start = self.i;
        // Read a symbol: everything up to '.', '/', '(' ,')' or '{' ; brackets may contain anything.
        while let Some(&c) = self.s.get(self.i) {
            match c {
                b'[' => {
                    while self.i < self.s.len() && self.s[self.i] != b']' {
                        self.i += 1;
                    }
                    self.i += 1;
                }
                b'.' | b'/' | b'(' | b')' | b'{' => break,
                _ => self.i += 1,
            }
        }
        let end = self.i.min(self.s.len());
        self.i = end;
        let sym = self.src.get(start..end)?;
        let c = self.symbol(sym)?;
        if self.s.get(self.i) == Some(&b'{') {
            self.skip_annotation()?;
        }
        Some(c)
    }

    fn skip_annotation(&mut self) -> Option<()> {
        while self.i < self.s.len() && self.s[self.i] != b'}' {
            self.i += 1;
        }
        if self.i >= self.s.len() {
            return None;
        }
        self.i += 1;
        Some(())
    }

    /// A symbol with optional trailing exponent, e.g. `m2`, `s-1`, `10*3`, `mm[Hg]`.
    fn symbol(&self, sym: &str) -> Option<Canon> {
        if sym.is_empty() {
            return None;
        }
        if let Some(c) = simple(sym) {
            return Some(c);
        }
        if sym.bytes().all(|b| b.is_ascii_digit()) {
            return Some(Canon {
                factor: Decimal::from_str(sym).ok()?,
                dims: [0; 9],
            });
        }
        // split trailing exponent
        let b = sym.as_bytes();
        let mut k = b.len();
        while k > 0 && b[k - 1].is_ascii_digit() {
            k -= 1;
        }
        if k > 0 && (b[k - 1] == b'-' || b[k - 1] == b'+') {
            k -= 1;
        }
        if k == 0 || k == b.len() {
            return None;
        }
        let e: i32 = sym[k..].parse().ok()?;
        if e.abs() > 9 {
            return None;
        }
        let base = simple(&sym[..k])?;
        pow(&base, e)
    }
}

/// Converts `value` expressed in `unit` to the canonical base units.
pub(crate) fn to_canonical(value: Decimal, unit: &str) -> Option<(Decimal, Dims)> {
    let c = canonical(unit)?;
    Some((value.checked_mul(c.factor)?, c.dims))
}
