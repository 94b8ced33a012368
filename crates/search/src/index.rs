//! What a resource is indexed under: one [`IndexEntry`] per (search parameter, value).

/// One index row of a resource, before the store adds tenant, type and resource key.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// The search parameter code (`name`, `subject`, `code`…); composite parts and
    /// special forms carry a suffix (`subject:identifier`, `code:text`).
    pub param: String,
    pub value: IndexValue,
}

/// An indexed value, already in the form search compares against.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// `norm` is [`crate::normalize::normalize_string`] of `exact`.
    String {
        norm: String,
        exact: String,
    },
    /// Coding/Identifier/ContactPoint/code/boolean. `system` is empty when absent.
    Token {
        system: String,
        code: String,
    },
    /// Inclusive range in epoch ms.
    Date {
        lo: i64,
        hi: i64,
    },
    /// Numbers and quantities are points or ranges (`lo == hi` for a plain value).
    Number {
        lo: f64,
        hi: f64,
    },
    /// `system`/`code` of the unit (`http://unitsofmeasure.org`, `mg`); `unit` is the human unit.
    Quantity {
        system: String,
        code: String,
        unit: String,
        lo: f64,
        hi: f64,
    },
    /// A literal reference `Type/id` (local) or an absolute URL / canonical (`ty` empty, `id` = url).
    Reference {
        ty: String,
        id: String,
    },
    Uri {
        value: String,
    },
}

/// A stable 31-bit key for a search parameter code, used in index keys instead of the text.
/// FNV-1a; collisions between the codes of one resource type are checked by the store at start-up.
pub fn param_key(code: &str) -> i64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in code.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0x7fff_ffff) as i64
}
