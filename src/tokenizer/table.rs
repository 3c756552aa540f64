//! Small, fast hash structures for the tokenizer: a byte-string → id table that stores only
//! ids (the strings live in the vocabulary's byte arena), and an Fx-style hasher for the
//! pair → merge map. std's SipHash is DoS-resistant but several times slower, and the keys here
//! come from the model file, not from the text being encoded.

use std::hash::{BuildHasherDefault, Hasher};

const K: u64 = 0x517c_c1b7_2722_0a95;

/// Folded 64×64→128 multiply: every output bit depends on every input bit.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = (a as u128) * (b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Hash of a byte string, eight bytes at a time (wyhash-style mixing).
#[inline]
pub(crate) fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = 0x243f_6a88_85a3_08d3 ^ b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = fold_mul(h ^ w, K);
    }
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    fold_mul(h ^ u64::from_le_bytes(last), 0x9e37_79b9_7f4a_7c15)
}

/// Hasher for integer keys (token-id pairs packed in a u64).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = (self.0.rotate_left(5) ^ hash_bytes(bytes)).wrapping_mul(K);
    }
    fn write_u64(&mut self, x: u64) {
        let h = (self.0.rotate_left(5) ^ x).wrapping_mul(K);
        self.0 = h ^ (h >> 32);
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(x as u64)
    }
}

pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;
pub(crate) type FxHashMap<K, V> = std::collections::HashMap<K, V, FxBuild>;

/// Token strings stored back to back, with offsets.
#[derive(Default)]
pub(crate) struct Arena {
    bytes: Vec<u8>,
    offs: Vec<u32>,
}

impl Arena {
    pub(crate) fn with_capacity(n: usize, bytes: usize) -> Self {
        let mut offs = Vec::with_capacity(n + 1);
        offs.push(0);
        Arena {
            bytes: Vec::with_capacity(bytes),
            offs,
        }
    }
    pub(crate) fn push(&mut self, b: &[u8]) {
        self.bytes.extend_from_slice(b);
        self.offs.push(self.bytes.len() as u32);
    }
    pub(crate) fn len(&self) -> usize {
        self.offs.len() - 1
    }
    #[inline]
    pub(crate) fn get(&self, i: usize) -> &[u8] {
        &self.bytes[self.offs[i] as usize..self.offs[i + 1] as usize]
    }
}

/// Open-addressing map from byte strings (held in an [`Arena`]) to their index. Each slot keeps
/// the high half of the key's hash beside the index, so a probe that misses (most lookups of
/// candidate merges do) is rejected without touching the arena.
pub(crate) struct StrTable {
    slots: Vec<u64>,
    mask: usize,
}

const EMPTY: u64 = u64::MAX;

impl StrTable {
    /// Index the arena entries for which `keep(i)` holds; on duplicates the first index wins.
    pub(crate) fn build(arena: &Arena, keep: impl Fn(usize) -> bool) -> Self {
        let kept = (0..arena.len()).filter(|&i| keep(i)).count();
        let cap = (kept * 2).max(16).next_power_of_two();
        let mut t = StrTable {
            slots: vec![EMPTY; cap],
            mask: cap - 1,
        };
        for i in 0..arena.len() {
            if !keep(i) {
                continue;
            }
            let key = arena.get(i);
            let h = hash_bytes(key);
            let tag = h & !0xffff_ffff;
            let mut s = h as usize & t.mask;
            loop {
                let v = t.slots[s];
                if v == EMPTY {
                    t.slots[s] = tag | i as u64;
                    break;
                }
                if v & !0xffff_ffff == tag && arena.get(v as u32 as usize) == key {
                    break; // duplicate: keep the first
                }
                s = (s + 1) & t.mask;
            }
        }
        t
    }

    #[inline]
    pub(crate) fn get(&self, arena: &Arena, key: &[u8]) -> Option<u32> {
        let h = hash_bytes(key);
        let tag = h & !0xffff_ffff;
        let mut s = h as usize & self.mask;
        loop {
            let v = self.slots[s];
            if v == EMPTY {
                return None;
            }
            if v & !0xffff_ffff == tag && arena.get(v as u32 as usize) == key {
                return Some(v as u32);
            }
            s = (s + 1) & self.mask;
        }
    }
}
