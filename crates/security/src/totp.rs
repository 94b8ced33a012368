//! Time-based one-time passwords (RFC 6238) as the second factor, with
//! replay refusal and one-time recovery codes.
//!
//! Parameters: HMAC-SHA-1, 6 digits, 30-second steps (what authenticator
//! apps support), a 160-bit random secret, ±1 step tolerated for clock drift.
//! A code is accepted only for a time step later than the last accepted one,
//! so an observed code cannot be replayed.

use chrono::{DateTime, Utc};
use rand::RngCore;
use totp_rs::{Algorithm, Secret, TOTP};

use crate::error::{ErrorKind, Result, SecurityError};

/// Length of a time step in seconds.
pub const STEP_SECONDS: u64 = 30;
/// Number of digits of a code.
pub const DIGITS: usize = 6;
/// Number of recovery codes issued at once.
pub const RECOVERY_CODE_COUNT: usize = 10;

/// Material shown to the user during enrolment.
#[derive(Debug, Clone)]
pub struct TotpEnrolment {
    /// Raw secret (20 bytes) to store (the store keeps it until confirmed).
    pub secret: Vec<u8>,
    /// Base32 secret for manual entry.
    pub secret_base32: String,
    /// `otpauth://totp/...` URI.
    pub otpauth_uri: String,
    /// QR code of the URI as a PNG image.
    pub qr_png: Vec<u8>,
    /// The same PNG as base64 (for a `data:image/png;base64,` URL).
    pub qr_png_base64: String,
}

fn totp_for(secret: &[u8], issuer: &str, account: &str) -> Result<TOTP> {
    // ':' is the label separator in otpauth URIs.
    let issuer = issuer.replace(':', " ");
    let account = account.replace(':', " ");
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        0,
        STEP_SECONDS,
        secret.to_vec(),
        Some(issuer),
        account,
    )
    .map_err(|e| {
        SecurityError::invalid(
            "二要素認証の設定が不正です",
            format!("invalid TOTP parameters: {e}"),
        )
    })
}

/// Starts enrolment: generates a fresh 160-bit secret, the otpauth URI and
/// its QR code. `issuer` is shown in the authenticator app (e.g. "iryo
/// (○○クリニック)"), `account` is the user name.
pub fn enrol(issuer: &str, account: &str) -> Result<TotpEnrolment> {
    let mut secret = vec![0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    enrolment_for_secret(secret, issuer, account)
}

/// Enrolment material for an existing secret (to show the QR code again
/// before confirmation).
pub fn enrolment_for_secret(secret: Vec<u8>, issuer: &str, account: &str) -> Result<TotpEnrolment> {
    let t = totp_for(&secret, issuer, account)?;
    let qr_png = t
        .get_qr_png()
        .map_err(|e| SecurityError::crypto(format!("QR code: {e}")))?;
    let qr_png_base64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&qr_png)
    };
    Ok(TotpEnrolment {
        secret_base32: Secret::Raw(secret.clone()).to_encoded().to_string(),
        otpauth_uri: t.get_url(),
        qr_png,
        qr_png_base64,
        secret,
    })
}

/// The current time step number.
pub fn time_step(now: DateTime<Utc>) -> u64 {
    (now.timestamp().max(0) as u64) / STEP_SECONDS
}

/// Code for a given time step (used by tests and by enrolment confirmation
/// screens of test tools).
pub fn code_at_step(secret: &[u8], step: u64) -> Result<String> {
    Ok(totp_for(secret, "iryo", "x")?.generate(step * STEP_SECONDS))
}

/// Verifies `code` at `now`, tolerating one step of drift either way.
/// `last_used_step` is the step of the last accepted code for this account;
/// a code of that step or an earlier one is refused as a replay. Returns the
/// accepted step, which the caller must store.
pub fn verify(
    secret: &[u8],
    code: &str,
    now: DateTime<Utc>,
    last_used_step: Option<u64>,
) -> Result<u64> {
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(wrong_code());
    }
    let t = totp_for(secret, "iryo", "x")?;
    let current = time_step(now);
    let mut matched = None;
    for step in [current.saturating_sub(1), current, current + 1] {
        let expected = t.generate(step * STEP_SECONDS);
        if crate::ct_eq(expected.as_bytes(), code.as_bytes()) {
            matched = Some(step);
        }
    }
    match matched {
        None => Err(wrong_code()),
        Some(step) if last_used_step.is_some_and(|l| step <= l) => Err(SecurityError::new(
            ErrorKind::Replay,
            "この確認コードは既に使用されています。次のコードをお待ちください",
            "TOTP code of an already used time step",
        )),
        Some(step) => Ok(step),
    }
}

fn wrong_code() -> SecurityError {
    SecurityError::new(
        ErrorKind::Unauthenticated,
        "確認コードが正しくありません",
        "wrong TOTP code",
    )
}

/// Generates one-time recovery codes (`xxxx-xxxx-xxxx-xxxx`, 80 bits each).
/// Returns the codes to show once and their hashes to store.
pub fn generate_recovery_codes() -> (Vec<String>, Vec<String>) {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut codes = Vec::with_capacity(RECOVERY_CODE_COUNT);
    for _ in 0..RECOVERY_CODE_COUNT {
        let mut raw = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let chars: String = raw
            .iter()
            // 31 symbols: modulo bias is ≤ 1/8 per symbol on a 256 range and
            // still leaves ≥ 78 bits of entropy over 16 symbols.
            .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
            .collect();
        codes.push(format!(
            "{}-{}-{}-{}",
            &chars[0..4],
            &chars[4..8],
            &chars[8..12],
            &chars[12..16]
        ));
    }
    let hashes = codes.iter().map(|c| hash_recovery_code(c)).collect();
    (codes, hashes)
}

/// Hash of a recovery code as stored (input normalised: case, spaces and
/// dashes ignored).
pub fn hash_recovery_code(code: &str) -> String {
    let norm: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    crate::sha256_hex(format!("iryo-recovery-code\u{0}{norm}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn enrolment_material() {
        let e = enrol("iryo (テストクリニック)", "yamada:taro").unwrap();
        assert_eq!(e.secret.len(), 20);
        assert!(e.otpauth_uri.starts_with("otpauth://totp/"));
        assert!(e.otpauth_uri.contains("secret="));
        assert!(e.qr_png.starts_with(b"\x89PNG"));
        assert!(!e.qr_png_base64.is_empty());
        assert_eq!(e.secret_base32.len(), 32);
    }

    #[test]
    fn rfc6238_sha1_vector() {
        // RFC 6238 Appendix B, SHA-1, T = 59 s → 94287082 (8 digits); the
        // 6-digit code is its last six digits.
        let secret = b"12345678901234567890";
        let code = code_at_step(secret, 59 / STEP_SECONDS).unwrap();
        assert_eq!(code, "287082");
        let code = code_at_step(secret, 1111111109 / STEP_SECONDS).unwrap();
        assert_eq!(code, "081804");
    }

    #[test]
    fn drift_and_replay() {
        let secret = enrol("iryo", "u").unwrap().secret;
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 15).unwrap();
        let step = time_step(now);
        let cur = code_at_step(&secret, step).unwrap();
        let prev = code_at_step(&secret, step - 1).unwrap();
        let next = code_at_step(&secret, step + 1).unwrap();
        let old = code_at_step(&secret, step - 2).unwrap();
        assert_eq!(verify(&secret, &prev, now, None).unwrap(), step - 1);
        assert_eq!(verify(&secret, &next, now, None).unwrap(), step + 1);
        assert_eq!(verify(&secret, &cur, now, None).unwrap(), step);
        if old != prev && old != cur && old != next {
            assert_eq!(
                verify(&secret, &old, now, None).unwrap_err().kind,
                ErrorKind::Unauthenticated
            );
        }
        // Replay of the accepted step, and of an earlier step, is refused.
        let e = verify(&secret, &cur, now, Some(step)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Replay);
        assert_eq!(
            verify(&secret, &prev, now, Some(step)).unwrap_err().kind,
            ErrorKind::Replay
        );
        // Next step still fine.
        assert_eq!(verify(&secret, &next, now, Some(step)).unwrap(), step + 1);
        // Garbage.
        for bad in ["", "12345", "1234567", "abcdef", "１２３４５６"] {
            assert!(verify(&secret, bad, now, None).is_err());
        }
    }

    #[test]
    fn recovery_codes_are_unique_and_hashed() {
        let (codes, hashes) = generate_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODE_COUNT);
        let set: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(set.len(), RECOVERY_CODE_COUNT);
        assert_eq!(codes[0].len(), 19);
        assert_eq!(hash_recovery_code(&codes[0]), hashes[0]);
        assert_eq!(
            hash_recovery_code(&codes[0].to_uppercase().replace('-', " ")),
            hashes[0]
        );
        assert!(!hashes[0].contains(&codes[0]));
    }
}
