//! Identifiers of JP-CLINS: the cross-institution patient key (被保険者個人識別子), the
//! 10-digit institution number (医療機関番号) and the report-unit identifier
//! (`医療機関番号^年^ID`). Source: jp-clins.md §5 (P110 R1013, R2152; CC Patient notes).

use sha2::{Digest, Sha256};

pub const MEMBER_ID_SYSTEM: &str = "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID";
pub const INSTITUTION_SYSTEM: &str =
    "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no";
pub const INSTITUTION_EXT: &str =
    "http://jpfhir.jp/fhir/clins/Extension/StructureDefinition/JP_eCS_InstitutionNumber";
pub const BUNDLE_ID_SYSTEM: &str = "http://jpfhir.jp/fhir/clins/bundle-identifier";
pub const RESOURCE_TYPE_TAG: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/BundleResourceType_CS";
pub const INDICATION_SYSTEM: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/JP_ehrshrs_indication";

/// True for a valid 保険医療機関番号: `[0-4][0-9][1-3][0-9]{7}`.
pub fn is_institution_number(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().all(u8::is_ascii_digit)
        && b[0] <= b'4'
        && (b'1'..=b'3').contains(&b[2])
}

/// A report-unit identifier `医療機関番号^YYYY^施設内ID` (R2152).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitId {
    pub value: String,
    pub institution: String,
}

/// Parse a report-unit identifier value; `None` when it breaks R2152.
pub fn parse_unit_id(value: &str) -> Option<UnitId> {
    let mut parts = value.split('^');
    let (inst, year, local) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !is_institution_number(inst) {
        return None;
    }
    let y = year.as_bytes();
    if y.len() != 4 || &y[..2] != b"20" || !(b'2'..=b'3').contains(&y[2]) || !y[3].is_ascii_digit()
    {
        return None;
    }
    if local.is_empty()
        || local.len() > 36
        || !local
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
    {
        return None;
    }
    Some(UnitId {
        value: value.to_string(),
        institution: inst.to_string(),
    })
}

/// A normalized 被保険者個人識別子 `保険者番号(8):記号:番号:枝番`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PatientKey {
    normalized: String,
}

impl PatientKey {
    /// The normalized text: half-width digits and letters, insurer number padded to 8 digits,
    /// branch number padded to 2 digits.
    pub fn as_str(&self) -> &str {
        &self.normalized
    }
    /// The 8-digit 保険者番号.
    pub fn insurer(&self) -> &str {
        &self.normalized[..8]
    }
    /// A stable opaque hash of the key (used as index tag; no personal data in the index).
    pub fn hash(&self) -> String {
        hash_hex(&self.normalized, 32)
    }
}

/// Full-width ASCII (U+FF01..U+FF5E) to half-width.
fn half_width(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        _ => c,
    }
}

/// Normalize a patient key so that one person links across institutions: full-width digits
/// and letters become half-width, the 保険者番号 is left-padded with zeros to 8 digits
/// (6-digit 国保 numbers), a one-digit 枝番 is padded to 2. Errors (R1013) carry a Japanese and
/// an English reason.
pub fn normalize_patient_key(raw: &str) -> Result<PatientKey, (String, String)> {
    let bad = |ja: &str, en: &str| {
        Err((
            format!("被保険者個人識別子 '{raw}' が不正です: {ja}"),
            format!("invalid patient key '{raw}': {en}"),
        ))
    };
    let s: String = raw.trim().chars().map(half_width).collect();
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 4 {
        return bad(
            "「保険者番号:記号:番号:枝番」の4項目が必要です",
            "four fields insurer:symbol:number:branch are required",
        );
    }
    let (ins, sym, num, br) = (parts[0], parts[1], parts[2], parts[3]);
    if ins.is_empty() || ins.len() > 8 || !ins.bytes().all(|b| b.is_ascii_digit()) {
        return bad(
            "保険者番号は8桁以内の数字です",
            "the insurer number is up to 8 digits",
        );
    }
    let spaced = |t: &str| t.chars().any(|c| c.is_whitespace() || c == '　');
    if spaced(sym) || spaced(num) {
        return bad(
            "記号・番号に空白は使えません",
            "symbol and number must not contain spaces",
        );
    }
    if num.is_empty() {
        return bad("被保険者番号がありません", "the insured number is missing");
    }
    if br.len() > 2 || !br.bytes().all(|b| b.is_ascii_digit()) {
        return bad("枝番は2桁の数字です", "the branch number is two digits");
    }
    let branch = if br.is_empty() {
        String::new()
    } else {
        format!("{br:0>2}")
    };
    Ok(PatientKey {
        normalized: format!("{ins:0>8}:{sym}:{num}:{branch}"),
    })
}

/// Lowercase hex of SHA-256 of `s`, first `n` characters.
pub fn hash_hex(s: &str, n: usize) -> String {
    let mut h = hex::encode(Sha256::digest(s.as_bytes()));
    h.truncate(n);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_key_normalization_links_widths_and_padding() {
        let a = normalize_patient_key("00012345:あいう:１８７:05").unwrap();
        let b = normalize_patient_key(" 12345:あいう:187:5 ").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "00012345:あいう:187:05");
        assert_eq!(a.insurer(), "00012345");
        assert_eq!(
            normalize_patient_key("０６１２３４５６::ＡＢ１:")
                .unwrap()
                .as_str(),
            "06123456::AB1:"
        );
    }

    #[test]
    fn patient_key_refusals() {
        for bad in [
            "",
            "00012345:abc:123",
            "123456789:a:1:01",
            "0001234x:a:1:01",
            "00012345:a b:1:01",
            "00012345:あ　い:1:01",
            "00012345:a::01",
            "00012345:a:1:123",
            "00012345:a:1:0a",
            "1:2:3:4:5",
        ] {
            assert!(normalize_patient_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn institution_and_unit_ids() {
        assert!(is_institution_number("1318814790"));
        assert!(!is_institution_number("1348814790"));
        assert!(!is_institution_number("131881479"));
        assert!(!is_institution_number("5318814790"));
        let u = parse_unit_id("1318814790^2024^0123-IDa-203949583949").unwrap();
        assert_eq!(u.institution, "1318814790");
        for bad in [
            "1318814790^2024",
            "1318814790^2014^x",
            "1318814790^2024^a_b",
            "1318814790^2024^",
            "131881479^2024^x",
            "1318814790^2024^x^y",
        ] {
            assert!(parse_unit_id(bad).is_none(), "{bad}");
        }
        assert!(parse_unit_id(&format!("1318814790^2030^{}", "a".repeat(37))).is_none());
    }
}
