//! The 支払基金 基本マスター and the 医科電子点数表: file layouts, dated versions, typed views
//! and the SQLite store that answers "what was this code worth on that date".

pub mod import;
pub mod store;
mod views;

pub use import::{import_masters, ImportPhase, ImportProgress, ImportReport};
pub use store::{
    CountLimit, Exclusion, ExclusionScope, InclusionChild, InclusionGroup, MasterStore, PriceOn,
};
pub use views::{AgeBound, Comment, Disease, Drug, Material, Modifier, Procedure};

use crate::num::{key_date, parse_fixed};

/// The six masters of the 基本マスター.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MasterKind {
    /// 医科診療行為マスター (`s_`, type `S`).
    Procedure,
    /// 医薬品マスター (`y_`, type `Y`).
    Drug,
    /// 特定器材マスター (`t_`, type `T`).
    Material,
    /// コメントマスター (`c_`, type `C`).
    Comment,
    /// 傷病名マスター (`b_`, type `B`).
    Disease,
    /// 修飾語マスター (`z_`, type `Z`).
    Modifier,
}

/// Column layout of one master (1-based column numbers from the 仕様説明書 R6).
pub(crate) struct KindSpec {
    pub kind: MasterKind,
    pub letter: char,
    pub column_counts: &'static [usize],
    pub code_col: usize,
    pub code_len: usize,
    pub name_col: usize,
    pub amount_col: Option<usize>,
    pub from_col: usize,
    pub to_col: usize,
}

pub(crate) const SPECS: [KindSpec; 6] = [
    KindSpec {
        kind: MasterKind::Procedure,
        letter: 'S',
        column_counts: &[150],
        code_col: 3,
        code_len: 9,
        name_col: 5,
        amount_col: Some(12),
        from_col: 87,
        to_col: 88,
    },
    KindSpec {
        kind: MasterKind::Drug,
        letter: 'Y',
        column_counts: &[40, 42],
        code_col: 3,
        code_len: 9,
        name_col: 5,
        amount_col: Some(12),
        from_col: 30,
        to_col: 31,
    },
    KindSpec {
        kind: MasterKind::Material,
        letter: 'T',
        column_counts: &[38],
        code_col: 3,
        code_len: 9,
        name_col: 5,
        amount_col: Some(12),
        from_col: 28,
        to_col: 30,
    },
    KindSpec {
        kind: MasterKind::Comment,
        letter: 'C',
        column_counts: &[30],
        code_col: 23,
        code_len: 9,
        name_col: 7,
        amount_col: None,
        from_col: 21,
        to_col: 22,
    },
    KindSpec {
        kind: MasterKind::Disease,
        letter: 'B',
        column_counts: &[46],
        code_col: 3,
        code_len: 7,
        name_col: 6,
        amount_col: None,
        from_col: 23,
        to_col: 24,
    },
    KindSpec {
        kind: MasterKind::Modifier,
        letter: 'Z',
        column_counts: &[19],
        code_col: 3,
        code_len: 4,
        name_col: 7,
        amount_col: None,
        from_col: 15,
        to_col: 16,
    },
];

impl MasterKind {
    /// The one-letter master type of column 2 (`S`, `Y`, `T`, `C`, `B`, `Z`).
    pub fn letter(self) -> char {
        self.spec().letter
    }

    /// Kind of a master type letter.
    pub fn from_letter(c: char) -> Option<Self> {
        SPECS.iter().find(|s| s.letter == c).map(|s| s.kind)
    }

    pub(crate) fn spec(self) -> &'static KindSpec {
        SPECS
            .iter()
            .find(|s| s.kind == self)
            .expect("every kind has a spec")
    }

    /// Kind from the file-name prefix (`s_`, `y_`, …).
    pub fn from_file_prefix(c: char) -> Option<Self> {
        Self::from_letter(c.to_ascii_uppercase())
    }
}

/// One dated version of one code: all master columns as text plus its validity window.
#[derive(Debug, Clone, PartialEq)]
pub struct MasterRecord {
    pub kind: MasterKind,
    pub code: String,
    /// First day this version applies (`yyyymmdd`; 0 = since always).
    pub valid_from: u32,
    /// Last day this version applies (`yyyymmdd`; 99999999 = open).
    pub valid_to: u32,
    /// Every column of the master row, 1-based through [`MasterRecord::col`].
    pub fields: Vec<String>,
}

impl MasterRecord {
    /// Column `n` (1-based) as text; empty when out of range.
    pub fn col(&self, n: usize) -> &str {
        n.checked_sub(1)
            .and_then(|i| self.fields.get(i))
            .map(|s| s.as_str())
            .unwrap_or("")
    }

    /// Column `n` as an integer (0 when empty or not a number).
    pub fn num(&self, n: usize) -> i64 {
        self.col(n).trim().parse().unwrap_or(0)
    }

    /// Column `n` as a 2-digit fixed-point amount (hundredths).
    pub fn amount(&self, n: usize) -> i64 {
        parse_fixed(self.col(n), 2).unwrap_or(0)
    }

    /// Whether this version applies on `date` (`yyyymmdd`).
    pub fn valid_on(&self, date: u32) -> bool {
        self.valid_from <= date && date <= self.valid_to
    }

    /// Validity window as ISO dates (`None` = open end).
    pub fn window(&self) -> (Option<chrono::NaiveDate>, Option<chrono::NaiveDate>) {
        (key_date(self.valid_from), key_date(self.valid_to))
    }
}
