//! Normalization of string search values: case- and accent-insensitive, width-insensitive for Japanese.

/// Normalize a string for the default (starts-with, case-insensitive) string search.
///
/// - Unicode compatibility folding of full-width ASCII (`ＡＢＣ１２３` → `abc123`) and half-width katakana
///   is approximated: full-width ASCII is folded; half-width katakana are mapped to full-width.
/// - Latin letters lowercased and common accents removed (`é` → `e`).
/// - Runs of white space (including the ideographic space U+3000) collapsed to one ASCII space and trimmed.
pub fn normalize_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for ch in s.chars() {
        let ch = fold_char(ch);
        if ch.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        if ch == '゛' || ch == '゜' {
            if let Some(prev) = out.pop() {
                match compose_kana(prev, ch == '゜') {
                    Some(c) => out.push(c),
                    None => {
                        out.push(prev);
                        out.push(ch);
                    }
                }
                continue;
            }
        }
        for lc in ch.to_lowercase() {
            out.push(strip_accent(lc));
        }
    }
    out
}

fn fold_char(ch: char) -> char {
    match ch as u32 {
        // full-width ASCII variants
        0xFF01..=0xFF5E => char::from_u32(ch as u32 - 0xFF01 + 0x21).unwrap_or(ch),
        0x3000 => ' ',
        0xFF61..=0xFF9F => halfwidth_katakana(ch),
        _ => ch,
    }
}

fn halfwidth_katakana(ch: char) -> char {
    const MAP: &str = "。「」、・ヲァィゥェォャュョッーアイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン゛゜";
    let idx = ch as u32 - 0xFF61;
    MAP.chars().nth(idx as usize).unwrap_or(ch)
}

/// Combine a katakana with a following (half-width) voiced or semi-voiced sound mark: `ﾀﾞ` → `ダ`.
fn compose_kana(base: char, semi: bool) -> Option<char> {
    let b = base as u32;
    let voiced = |c: u32| char::from_u32(c + 1);
    match (base, semi) {
        ('ウ', false) => Some('ヴ'),
        (_, false) if (0x30AB..=0x30C2).contains(&b) && b % 2 == 1 => voiced(b),
        (_, false) if (0x30C4..=0x30C8).contains(&b) && b % 2 == 0 => voiced(b),
        (_, _) if (0x30CF..=0x30DD).contains(&b) && (b - 0x30CF) % 3 == 0 => {
            char::from_u32(b + if semi { 2 } else { 1 })
        }
        _ => None,
    }
}

fn strip_accent(ch: char) -> char {
    match ch {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' => 'a',
        'ç' => 'c',
        'è' | 'é' | 'ê' | 'ë' | 'ē' => 'e',
        'ì' | 'í' | 'î' | 'ï' | 'ī' => 'i',
        'ñ' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' => 'o',
        'ù' | 'ú' | 'û' | 'ü' | 'ū' => 'u',
        'ý' | 'ÿ' => 'y',
        _ => ch,
    }
}

/// The smallest string greater than every string starting with `prefix` (for index range scans).
pub fn prefix_upper_bound(prefix: &str) -> String {
    let mut s = prefix.to_string();
    s.push(char::MAX);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn folds_case_width_accents_space() {
        assert_eq!(normalize_string("  José  ÁLVAREZ "), "jose alvarez");
        assert_eq!(normalize_string("ＹＡＭＡＤＡ　太郎"), "yamada 太郎");
        assert_eq!(normalize_string("ﾔﾏﾀﾞ ﾊﾟﾝ"), "ヤマダ パン");
        assert_eq!(normalize_string("ｶﾞｷﾞﾂﾞﾃﾞﾄﾞﾎﾞ"), "ガギヅデドボ");
        assert_eq!(normalize_string(""), "");
    }
    #[test]
    fn upper_bound_sorts_after_prefix_matches() {
        let ub = prefix_upper_bound("yam");
        assert!("yamada".to_string() < ub);
        assert!("yam".to_string() < ub);
        assert!("yan".to_string() > ub);
        assert!("yal".to_string() < "yam".to_string());
    }
}
