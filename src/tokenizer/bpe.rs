//! Byte-level BPE: the ranked merges of `tokenizer.ggml.merges`, applied to one pre-token.

use super::table::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub(crate) const NONE: u32 = u32::MAX;

#[inline]
pub(crate) fn pair_key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

/// The GPT-2 byte ↔ character map: printable Latin-1 bytes stand for themselves, the others
/// (controls, space, …) are shifted to U+0100 and up, in byte order.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut t = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        t[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or('\0')
        };
    }
    t
}

/// Inverse of [`byte_to_char_table`]: byte-level text back to raw bytes, None if a character
/// is outside the 256-character alphabet.
pub(crate) fn unbyte(s: &str, inv: &[i16; 324], out: &mut Vec<u8>) -> bool {
    for c in s.chars() {
        let v = c as usize;
        if v >= inv.len() || inv[v] < 0 {
            return false;
        }
        out.push(inv[v] as u8);
    }
    true
}

pub(crate) fn inverse_table() -> [i16; 324] {
    let mut inv = [-1i16; 324];
    for (b, c) in byte_to_char_table().iter().enumerate() {
        inv[*c as usize] = b as i16;
    }
    inv
}

pub(crate) struct Bpe {
    /// (left id, right id) → (rank, merged id).
    pub merges: FxHashMap<u64, (u32, u32)>,
    /// The token of each single byte (the unknown token, or NONE, where the vocabulary has
    /// no token for that byte: SmolLM2 lacks a few control bytes).
    pub byte_ids: [u32; 256],
}

/// Reusable buffers for one encode call.
#[derive(Default)]
pub(crate) struct BpeScratch {
    ids: Vec<u32>,
    syms: Vec<(u32, u32, u32)>,                      // (id, prev, next)
    heap: BinaryHeap<Reverse<(u32, u32, u32, u32)>>, // (rank, pos, left id, right id)
}

impl Bpe {
    #[inline]
    fn merge_of(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        self.merges.get(&pair_key(a, b)).copied()
    }

    /// Apply the merges to one pre-token's bytes: repeatedly merge the adjacent pair with the
    /// lowest rank (leftmost on ties) until no pair has a merge.
    /// Err(byte) if the word has a byte the vocabulary cannot spell.
    pub(crate) fn encode_word(
        &self,
        word: &[u8],
        sc: &mut BpeScratch,
        out: &mut Vec<u32>,
    ) -> Result<(), u8> {
        if let Some(&b) = word.iter().find(|&&b| self.byte_ids[b as usize] == NONE) {
            return Err(b);
        }
        if word.len() > 24 {
            self.encode_long(word, sc, out);
            return Ok(());
        }
        let ids = &mut sc.ids;
        ids.clear();
        ids.extend(word.iter().map(|&b| self.byte_ids[b as usize]));
        while ids.len() > 1 {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..ids.len() - 1 {
                if let Some((rank, m)) = self.merge_of(ids[i], ids[i + 1]) {
                    if best.map_or(true, |(r, _, _)| rank < r) {
                        best = Some((rank, i, m));
                    }
                }
            }
            let Some((_, i, m)) = best else { break };
            ids[i] = m;
            ids.remove(i + 1);
        }
        out.extend_from_slice(ids);
        Ok(())
    }

    /// The same with a heap and a linked list: O(n log n) for long pieces (runs of spaces, …).
    fn encode_long(&self, word: &[u8], sc: &mut BpeScratch, out: &mut Vec<u32>) {
        let syms = &mut sc.syms;
        let heap = &mut sc.heap;
        syms.clear();
        heap.clear();
        let n = word.len() as u32;
        for (i, &b) in word.iter().enumerate() {
            let i = i as u32;
            let prev = if i == 0 { NONE } else { i - 1 };
            let next = if i + 1 == n { NONE } else { i + 1 };
            syms.push((self.byte_ids[b as usize], prev, next));
        }
        for i in 0..syms.len().saturating_sub(1) {
            let (a, b) = (syms[i].0, syms[i + 1].0);
            if let Some((rank, _)) = self.merge_of(a, b) {
                heap.push(Reverse((rank, i as u32, a, b)));
            }
        }
        while let Some(Reverse((_, pos, a, b))) = heap.pop() {
            let (id, prev, next) = syms[pos as usize];
            // Stale entries: the symbol was merged away or changed since it was pushed.
            if id != a || next == NONE || syms[next as usize].0 != b {
                continue;
            }
            let Some((_, m)) = self.merge_of(a, b) else {
                continue;
            };
            let after = syms[next as usize].2;
            syms[pos as usize] = (m, prev, after);
            syms[next as usize].0 = NONE; // dead
            if after != NONE {
                syms[after as usize].1 = pos;
                let c = syms[after as usize].0;
                if let Some((rank, _)) = self.merge_of(m, c) {
                    heap.push(Reverse((rank, pos, m, c)));
                }
            }
            if prev != NONE {
                let p = syms[prev as usize].0;
                if let Some((rank, _)) = self.merge_of(p, m) {
                    heap.push(Reverse((rank, prev, p, m)));
                }
            }
        }
        let mut i = 0u32;
        while i != NONE {
            let (id, _, next) = syms[i as usize];
            out.push(id);
            i = next;
        }
    }
}
