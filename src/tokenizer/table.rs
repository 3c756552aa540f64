//! Small, fast hash structures for the tokenizer: a byte-string → id table that stores only
//! ids (the strings live in the vocabulary's byte arena), and an Fx-style hasher for the
//! pair → merge map. std's SipHash is DoS-resistant but several times slower, and the keys here
//! come from the model file, not from the text being encoded.

use std::hash::{BuildHasherDefault, Hasher};

const K: u64 = 0x517c_c1b7_2722_0a95;

/// Fx-style hash of a byte string, eight bytes at a time.
pub(crate) fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    h = (h.rotate_left(5) ^ u64::from_le_bytes(last)).wrapping_mul(K);
    // Final avalanche so that the low bits (used for the slot) depend on every input bit.
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
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

/// Open-addressing map from byte strings (held in an [`Arena`]) to their index.
pub(crate) struct StrTable {
    slots: Vec<u32>,
    mask: usize,
}

const EMPTY: u32 = u32::MAX;

impl StrTable {
    /// Index the arena entries for which `keep(i)` holds; on duplicates the first index wins.
    pub(crate) fn build(arena: &Arena, keep: impl Fn(usize) -> bool) -> Self {
        let cap = (arena.len() * 2).max(16).next_power_of_two();
        let mut t = StrTable {
            slots: vec![EMPTY; cap],
            mask: cap - 1,
        };
        for i in 0..arena.len() {
            if !keep(i) {
                continue;
            }
            let key = arena.get(i);
            let mut s = hash_bytes(key) as usize & t.mask;
            loop {
                let v = t.slots[s];
                if v == EMPTY {
                    t.slots[s] = i as u32;
                    break;
                }
                if arena.get(v as usize) == key {
                    break; // duplicate: keep the first
                }
                s = (s + 1) & t.mask;
            }
        }
        t
    }

    #[inline]
    pub(crate) fn get(&self, arena: &Arena, key: &[u8]) -> Option<u32> {
        let mut s = hash_bytes(key) as usize & self.mask;
        loop {
            let v = self.slots[s];
            if v == EMPTY {
                return None;
            }
            if arena.get(v as usize) == key {
                return Some(v);
            }
            s = (s + 1) & self.mask;
        }
    }
}
