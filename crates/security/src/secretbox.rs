//! Encryption of small secrets at rest (TOTP seeds) with AES-256-GCM under a
//! server key kept outside the database. The associated data binds a sealed
//! value to its owner (tenant and user), so sealed values cannot be moved
//! between accounts.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;

use crate::error::{Result, SecurityError};

const VERSION: u8 = 1;

/// Seals `plaintext`: `version(1) || nonce(12) || ciphertext+tag`.
pub fn seal(key: &[u8; 32], context: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(SecurityError::crypto)?;
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: context.as_bytes(),
            },
        )
        .map_err(SecurityError::crypto)?;
    let mut out = Vec::with_capacity(1 + 12 + ct.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a value made by [`seal`] with the same key and context.
pub fn open(key: &[u8; 32], context: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    if sealed.len() < 1 + 12 + 16 || sealed[0] != VERSION {
        return Err(SecurityError::integrity(
            "秘密情報の形式が正しくありません",
            "sealed secret malformed",
        ));
    }
    let cipher = Aes256Gcm::new_from_slice(key).map_err(SecurityError::crypto)?;
    cipher
        .decrypt(
            Nonce::from_slice(&sealed[1..13]),
            Payload {
                msg: &sealed[13..],
                aad: context.as_bytes(),
            },
        )
        .map_err(|_| {
            SecurityError::integrity(
                "秘密情報を復号できません(鍵が違うか改ざんされています)",
                "sealed secret failed authentication (wrong key or tampered)",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open() {
        let k = [3u8; 32];
        let s = seal(&k, "t/u1", b"seed").unwrap();
        assert_eq!(open(&k, "t/u1", &s).unwrap(), b"seed");
        assert!(open(&k, "t/u2", &s).is_err());
        assert!(open(&[4u8; 32], "t/u1", &s).is_err());
        let mut bad = s.clone();
        bad[20] ^= 1;
        assert!(open(&k, "t/u1", &bad).is_err());
        assert!(open(&k, "t/u1", &s[..10]).is_err());
        assert_ne!(seal(&k, "t/u1", b"seed").unwrap(), s);
    }
}
