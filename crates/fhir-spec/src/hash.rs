//! A small, fast non-cryptographic hasher for the internal lookup tables
//! (keys are short element names, paths, codes and canonical URLs from our own data).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Word-at-a-time multiplicative hash (the FxHash scheme, with a final rotation so that the
/// low bits hashbrown uses for the bucket index depend on all input bits). Several times
/// cheaper than SipHash and than byte-wise FNV on 10–80-byte keys; not DoS-resistant, so only
/// for tables whose keys come from our own definitions or are bounded.
#[derive(Clone, Copy, Default)]
pub struct Fnv(u64);

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl Fnv {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(K);
    }
}

impl Hasher for Fnv {
    #[inline]
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i) | 0x100);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;
